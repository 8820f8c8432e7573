"""Training throughput, side by side: the popular script's per-sample DataLoader pipeline
vs main.py's in-memory batches, in float32 and with --amp, and the share of an epoch
spent outside the model step.

    python benchmarks/bench_train.py --data-root ./data
    python benchmarks/bench_train.py --face --rounds 4   # LFW's resnet10, CPU (and GPU)
    python benchmarks/bench_train.py --face --compile    # ... and torch.compile against eager

Each pipeline trains LeNet++ + center loss with main.train_step (the same step main.py
runs) over the first --images training images, after one warm-up batch. "data" is the
time spent waiting for the next batch, "step" the model step, "other" the rest of the
loop (loss meters, logging). The plotting cost of a full MNIST epoch (--plot: 60,000
train and 10,000 test points, and both GIFs rebuilt) is measured separately and added
to the full-epoch overhead estimate: overhead per batch x 469 batches + plotting.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import main  # noqa: E402
import models  # noqa: E402
import utils  # noqa: E402
from center_loss import CenterLoss  # noqa: E402

BATCHES_PER_EPOCH = 469  # MNIST: 60,000 images in batches of 128


def popular_loader(root, images, batch_size, workers):
    """What the popular script does: PIL images through ToTensor + Normalize, per sample."""
    import torchvision.transforms as T
    transform = T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])
    ds = torchvision_mnist(root, transform)
    subset = torch.utils.data.Subset(ds, range(images))
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=True,
                                       num_workers=workers, pin_memory=False)


def torchvision_mnist(root, transform):
    import torchvision
    return torchvision.datasets.MNIST(root, train=True, download=True, transform=transform)


def our_loader(root, images, batch_size):
    loader = datasets.create("mnist", batch_size, use_gpu=False, root=root).trainloader
    loader.images, loader.labels = loader.images[:images], loader.labels[:images]
    return loader


def run_epoch(loader, amp):
    args = main.get_parser().parse_args(["--use-cpu"] + (["--amp"] if amp else []))
    torch.manual_seed(1)
    model = models.create("cnn", 10)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    xent, cent = torch.nn.CrossEntropyLoss(), CenterLoss(10, 2, use_gpu=False)
    opt_m = torch.optim.SGD(model.parameters(), lr=args.lr_model, momentum=0.9, weight_decay=5e-4)
    opt_c = torch.optim.SGD(cent.parameters(), lr=args.lr_cent)
    meters = [utils.AverageMeter() for _ in range(3)]
    devnull = open(os.devnull, "w")
    data_t = step_t = 0.0
    n = 0
    it = iter(loader)
    first = next(it)  # warm-up batch (worker start-up, one-off allocations) not timed
    main.train_step(model, xent, cent, opt_m, opt_c, *first, args)
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            data, labels = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        features, values = main.train_step(model, xent, cent, opt_m, opt_c, data, labels, args)
        t2 = time.perf_counter()
        data_t, step_t, n = data_t + t1 - t0, step_t + t2 - t1, n + len(labels)
        for meter, v in zip(meters, values.tolist()):
            meter.update(v, len(labels))
        print("Batch {}\t Loss {:.6f} ({:.6f})".format(n, meters[0].val, meters[0].avg), file=devnull)
    total = time.perf_counter() - start
    return n, total, data_t, step_t


def layout_race(root, rounds, steps):
    """Milliseconds per fp32 train_step, contiguous vs channels_last (model and batch),
    alternating in each round on the same batches, so that the machine's drifts hit
    both layouts alike. Returns {layout: [ms per step of each round]}."""
    loader = our_loader(root, 128 * steps, 128)
    batches = list(loader)
    times = {False: [], True: []}
    setups = {}
    for channels_last in (False, True):
        args = main.get_parser().parse_args(["--use-cpu"])
        args.channels_last = channels_last
        torch.manual_seed(1)
        model = models.create("cnn", 10)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        cent = CenterLoss(10, 2, use_gpu=False)
        opt_m = torch.optim.SGD(model.parameters(), lr=args.lr_model, momentum=0.9,
                                weight_decay=5e-4)
        opt_c = torch.optim.SGD(cent.parameters(), lr=args.lr_cent)
        setups[channels_last] = (model, torch.nn.CrossEntropyLoss(), cent, opt_m, opt_c, args)
        main.train_step(model, setups[channels_last][1], cent, opt_m, opt_c, *batches[0], args)
    for r in range(rounds):
        for channels_last in ((False, True) if r % 2 == 0 else (True, False)):
            model, xent, cent, opt_m, opt_c, args = setups[channels_last]
            start = time.perf_counter()
            for data, labels in batches:
                main.train_step(model, xent, cent, opt_m, opt_c, data, labels, args)
            times[channels_last].append(1000 * (time.perf_counter() - start) / len(batches))
    return times


def plotting_cost(frames=30):
    """Seconds of --plot per epoch at epoch `frames`: two scatters and two GIF rebuilds."""
    gen = torch.Generator().manual_seed(0)
    classes = [str(d) for d in range(10)]
    with tempfile.TemporaryDirectory() as d:
        for split, count in (("train", 60000), ("test", 10000)):
            feats, labels = torch.randn(count, 2, generator=gen), torch.arange(count) % 10
            for epoch in range(1, frames):  # earlier frames, as on disk by then
                utils.plot_features(feats[:500], labels[:500], classes,
                                    os.path.join(d, split, f"epoch_{epoch}.png"), "warm-up")
        start = time.perf_counter()
        for split, count in (("train", 60000), ("test", 10000)):
            feats, labels = torch.randn(count, 2, generator=gen) * 5, torch.arange(count) % 10
            utils.plot_features(feats, labels, classes,
                                os.path.join(d, split, f"epoch_{frames}.png"), "mnist")
            utils.make_gif(os.path.join(d, split), os.path.join(d, f"{split}.gif"))
        return time.perf_counter() - start


def face_race(rounds, steps, device, amp=False, compile_modes=()):
    """Images/s of the face network's training step (resnet10, 512-D features, 4,038
    classes: LFW View 1's), contiguous vs channels_last, fp32 (and bf16 with `amp`), on
    synthetic uint8 batches of 72 x 72 crops through the training pipeline (random
    64 x 64 crop and mirror, normalisation) and main.train_step with center loss (eq. 4).
    Rounds alternate the layouts, so that the machine's drifts hit both alike.
    Returns {name: [images/s of each round]}."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (128 * steps, 3, 72, 72), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4038, (128 * steps,), generator=g)
    crop = datasets.RandomCropFlip(64, g)
    mean, std = [0.53, 0.42, 0.35], [0.26, 0.22, 0.22]
    setups = {}
    variants = [("fp32, contiguous", False, False, None),
                ("fp32, channels_last", True, False, None),
                ("bf16 autocast, channels_last", True, True, None)]
    variants += [(f"fp32, channels_last, torch.compile {m}", True, False, m)
                 for m in compile_modes]
    for name, channels_last, use_amp, mode in variants:
        if use_amp and not amp:
            continue
        args = main.get_parser().parse_args(["-d", "lfw", "--weight-cent", "0.003",
                                             "--center-update", "paper"]
                                            + (["--amp"] if use_amp else []))
        main.resolve_defaults(args, set())
        args.channels_last = channels_last
        torch.manual_seed(1)
        model = models.create("resnet10", 4038, feat_dim=512).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        cent = CenterLoss(4038, 512, use_gpu=device != "cpu", update="paper").to(device)
        opt_m = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        opt_c = torch.optim.SGD(cent.parameters(), lr=0.5)
        if mode is not None:  # as main.py --compile: the training forward and backward
            model = torch.compile(model, mode=mode)
        setups[name] = (model, torch.nn.CrossEntropyLoss(), cent, opt_m, opt_c, args)

    def batches():
        for i in range(steps):
            part = slice(128 * i, 128 * (i + 1))
            x = datasets.normalise(crop(images[part].to(device)), mean, std)
            yield x, labels[part].to(device)
    for name, s in setups.items():  # warm-up: one-off allocations, cuDNN's choice, compiling
        for data, target in list(batches())[:3]:  # CUDA graphs record on the third call
            main.train_step(*s[:5], data, target, s[5])
    times = {name: [] for name in setups}
    for r in range(rounds):
        for name in (list(setups) if r % 2 == 0 else list(setups)[::-1]):
            model, xent, cent, opt_m, opt_c, args = setups[name]
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for data, target in batches():
                main.train_step(model, xent, cent, opt_m, opt_c, data, target, args)
            if device != "cpu":
                torch.cuda.synchronize()
            times[name].append(128 * steps / (time.perf_counter() - start))
    return times


def main_():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="./data")
    p.add_argument("--images", type=int, default=2048, help="training images per fp32 pipeline")
    p.add_argument("--amp-images", type=int, default=1024, help="training images for --amp")
    p.add_argument("--workers", type=int, default=4, help="popular pipeline's -j (its default: 4)")
    p.add_argument("--rounds", type=int, default=8, help="rounds of the layout race")
    p.add_argument("--layout-only", action="store_true", help="only the layout race")
    p.add_argument("--face", action="store_true",
                   help="only the face network (resnet10 on LFW-sized batches): images/s by "
                        "layout, on the CPU and, where there is one, on the GPU")
    p.add_argument("--amp", action="store_true", help="with --face: bf16 autocast too")
    p.add_argument("--compile", action="store_true",
                   help="with --face: torch.compile too (default mode; on a GPU also "
                        "reduce-overhead, CUDA graphs), against eager")
    args = p.parse_args()
    if args.face:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            steps = 3 if device == "cpu" else 20
            what = (torch.cuda.get_device_name() if device == "cuda"
                    else f"CPU, {torch.get_num_threads()} threads")
            print(f"torch {torch.__version__}, {what}: resnet10 (512-D, 4,038 classes) + center "
                  f"loss, batch 128, {args.rounds} alternating rounds of {steps} batches")
            modes = (["default"] + (["reduce-overhead"] if device == "cuda" else [])
                     if args.compile else [])
            times = face_race(args.rounds, steps, device, args.amp, modes)
            print("| device | layout | images/s, median | min | max |")
            print("|---|---|---:|---:|---:|")
            for name, t in times.items():
                print(f"| {device} | {name} | {statistics.median(t):.1f} | {min(t):.1f} | "
                      f"{max(t):.1f} |", flush=True)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 128, fp32: "
          f"train_step time by memory layout ({args.rounds} alternating rounds of 6 batches)")
    times = layout_race(args.data_root, args.rounds, 6)
    base = statistics.median(times[False])
    print("| layout | ms/step, median | min | max | speed vs contiguous (median) |")
    print("|---|---:|---:|---:|---:|")
    for channels_last, name in ((False, "contiguous (NCHW)"), (True, "channels_last (NHWC)")):
        t = times[channels_last]
        print(f"| {name} | {statistics.median(t):.1f} | {min(t):.1f} | {max(t):.1f} | "
              f"{base / statistics.median(t):.2f}x |", flush=True)
    if args.layout_only:
        return

    plot_s = plotting_cost()
    rows = [("popular DataLoader (-j %d)" % args.workers, "fp32", False,
             lambda: popular_loader(args.data_root, args.images, 128, args.workers)),
            ("ours, in memory", "fp32", False, lambda: our_loader(args.data_root, args.images, 128)),
            ("ours, in memory", "--amp (bf16)", True,
             lambda: our_loader(args.data_root, args.amp_images, 128))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 128; "
          f"--plot costs {plot_s:.2f} s per epoch (measured at epoch 30)")
    print("| pipeline | precision | images | images/s | vs popular fp32 | data | step | other "
          "| overhead, full epoch with --plot |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for name, precision, amp, make in rows:
        n, total, data_t, step_t = run_epoch(make(), amp)
        rate = n / total
        base = base or rate
        per_batch_overhead = (total - step_t) / (n / 128)
        epoch_overhead = per_batch_overhead * BATCHES_PER_EPOCH + plot_s
        epoch_total = step_t / (n / 128) * BATCHES_PER_EPOCH + epoch_overhead
        print(f"| {name} | {precision} | {n} | {rate:.1f} | {rate / base:.2f}x | "
              f"{100 * data_t / total:.1f}% | {100 * step_t / total:.1f}% | "
              f"{100 * (total - data_t - step_t) / total:.1f}% | "
              f"{100 * epoch_overhead / epoch_total:.1f}% |", flush=True)


if __name__ == "__main__":
    main_()
