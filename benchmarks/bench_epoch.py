"""Where an epoch of the popular command goes: `python main.py --plot` (LeNet++, center loss,
MNIST, the popular defaults) broken down by phase, side by side with the popular
implementation's own loop in the same run.

    python benchmarks/bench_epoch.py --data-root ./data             # the CPU
    python benchmarks/bench_epoch.py --data-root ./data --gpu 0     # a GPU

Each side trains --epochs epochs in a fresh process, one after the other, on the same
images (the first --train-images / --test-images of MNIST, written as IDX files to a
temporary folder). The popular loop is written out here as its main.py runs it: a
DataLoader of PIL images through ToTensor + Normalize with -j 4, the B x C center loss,
three .item() and a .cpu() of the batch's features every batch, a matplotlib scatter of
each split's features, a test pass every --eval-freq epochs. Ours is main.main() itself,
its phases timed by wrapping its functions (with a device synchronisation at each phase's
ends only: no wait is added inside an epoch). Phases are seconds an epoch, the mean over
epochs 2 to --epochs (epoch 1 pays the one-off start-up); the test pass counts where it
runs (with the default --eval-freq 10, once in epochs 1-10).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bench_plot  # noqa: E402  (its IDX subset writer)

PHASES = ["data", "steps", "features to host", "test pass", "plots", "metrics and logging",
          "checkpoint", "other"]


class Clock:
    """Seconds by phase and epoch; with a GPU, each reading waits for the queued work."""

    def __init__(self, cuda):
        self.cuda, self.epochs, self.current = cuda, [], None

    def now(self):
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def new_epoch(self):
        self.current = dict.fromkeys(PHASES, 0.0)
        self.epochs.append(self.current)

    def add(self, phase, seconds):
        self.current[phase] += seconds

    def timed(self, phase, fn):
        def wrapper(*args, **kwargs):
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase, self.now() - start)
        return wrapper


# ------------------------------------------------------------------ the popular loop

def popular_plot(features, labels, epoch, path):
    """The popular script's plot_features: one scatter call a class, its legend, savefig."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = [f"C{i}" for i in range(10)]
    for label_idx in range(10):
        plt.scatter(features[labels == label_idx, 0], features[labels == label_idx, 1],
                    c=colors[label_idx], s=1)
    plt.legend([str(i) for i in range(10)], loc="upper right")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    plt.savefig(path, bbox_inches="tight")
    plt.close()


def popular_side(args, data, out, clock):
    import torchvision
    import torchvision.transforms as T
    from bench_center_loss import PopularCenterLoss
    import models
    device = torch.device("cuda" if args.gpu is not None else "cpu")
    use_gpu = device.type == "cuda"
    transform = T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])
    loaders = [torch.utils.data.DataLoader(
        torchvision.datasets.MNIST(data, train=train, download=False, transform=transform),
        batch_size=128, shuffle=train, num_workers=args.workers, pin_memory=use_gpu)
        for train in (True, False)]
    torch.manual_seed(1)
    model = models.create("cnn", 10).to(device)
    cent = PopularCenterLoss(10, 2, device)
    xent = torch.nn.CrossEntropyLoss()
    opt_m = torch.optim.SGD(model.parameters(), lr=0.001, weight_decay=5e-04, momentum=0.9)
    opt_c = torch.optim.SGD(cent.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(opt_m, step_size=20, gamma=0.5)
    for epoch in range(args.epochs):
        clock.new_epoch()
        epoch_start = clock.now()
        model.train()
        sums, count, all_features, all_labels = [0.0, 0.0, 0.0], 0, [], []
        it = iter(loaders[0])
        batch_idx = 0
        while True:
            t0 = time.perf_counter()
            try:
                data_, labels = next(it)
            except StopIteration:
                clock.add("data", time.perf_counter() - t0)
                break
            t1 = time.perf_counter()
            data_, labels = data_.to(device), labels.to(device)
            features, outputs = model(data_)
            loss_xent = xent(outputs, labels)
            loss_cent = cent(features, labels) * 1.0  # --weight-cent 1
            loss = loss_xent + loss_cent
            opt_m.zero_grad()
            opt_c.zero_grad()
            loss.backward()
            opt_m.step()
            for param in cent.parameters():
                param.grad.data *= 1.0
            opt_c.step()
            for j, v in enumerate((loss, loss_xent, loss_cent)):  # its AverageMeters
                sums[j] += v.item() * labels.size(0)
            count += labels.size(0)
            t2 = time.perf_counter()
            all_features.append(features.data.cpu().numpy())
            all_labels.append(labels.data.cpu().numpy())
            t3 = time.perf_counter()
            if (batch_idx + 1) % 50 == 0:
                print("Batch {}/{}\t Loss {:.6f}".format(batch_idx + 1, len(loaders[0]),
                                                          sums[0] / count), file=sys.stderr)
            batch_idx += 1
            clock.add("data", t1 - t0)
            clock.add("steps", t2 - t1)
            clock.add("features to host", t3 - t2)
            clock.add("metrics and logging", time.perf_counter() - t3)
        plot = clock.timed("plots", popular_plot)
        plot(np.concatenate(all_features), np.concatenate(all_labels), epoch,
             os.path.join(out, "train", f"epoch_{epoch + 1}.png"))
        scheduler.step()
        if (epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs:
            start = clock.now()
            model.eval()
            correct, total, feats, labs = 0, 0, [], []
            with torch.no_grad():
                for data_, labels in loaders[1]:
                    data_, labels = data_.to(device), labels.to(device)
                    features, outputs = model(data_)
                    predictions = outputs.data.max(1)[1]
                    total += labels.size(0)
                    correct += (predictions == labels.data).sum()
                    feats.append(features.data.cpu().numpy())
                    labs.append(labels.data.cpu().numpy())
            acc = correct * 100. / total
            print(f"Accuracy (%): {float(acc)}", file=sys.stderr)
            clock.add("test pass", clock.now() - start)
            plot(np.concatenate(feats), np.concatenate(labs), epoch,
                 os.path.join(out, "test", f"epoch_{epoch + 1}.png"))
        total_s = clock.now() - epoch_start
        clock.add("other", total_s - sum(clock.current.values()))
    return {}


# ------------------------------------------------------------------ ours: main.py

def ours_side(args, data, out, clock):
    import main
    import utils
    end = {}
    argv = ["--plot", "--data-root", data, "--save-dir", out, "--max-epoch", str(args.epochs),
            "--eval-freq", str(args.eval_freq), "--workers", str(args.workers)]
    argv += ["--gpu", str(args.gpu)] if args.gpu is not None else ["--use-cpu"]
    train, time_line = main.train, main.epoch_time_line

    def timed_train(*a, **k):
        clock.new_epoch()
        start = clock.now()
        result = train(*a, **k)
        clock.add("steps", clock.now() - start - clock.current["features to host"])
        return result

    def timed_record(*a, **k):
        start = clock.now()
        result = record(*a, **k)
        clock.add("metrics and logging", clock.now() - start - clock.current["plots"])
        return result

    def epoch_line(epoch, max_epoch, seconds):
        clock.add("other", seconds - sum(clock.current.values()))
        return time_line(epoch, max_epoch, seconds)

    def timed_close(plotter):
        start = clock.now()
        close(plotter)
        end["plots at the end (last frames, both GIFs)"] = clock.now() - start

    record, close = main.record, utils.Plotter.close
    main.train, main.record, main.epoch_time_line = timed_train, timed_record, epoch_line
    main.gather_features = clock.timed("features to host", main.gather_features)
    main.test = clock.timed("test pass", main.test)
    main.plot_epoch = clock.timed("plots", main.plot_epoch)
    utils.save_checkpoint = clock.timed("checkpoint", utils.save_checkpoint)
    utils.Plotter.close = timed_close
    stdout = sys.stdout
    try:
        sys.stdout = sys.stderr  # the table goes to stdout; the run's console does not
        main.main(argv)
    finally:
        sys.stdout = stdout
    return end


def side(args):
    """Run one side (in this process) and print its phases as JSON."""
    clock = Clock(args.gpu is not None)
    run = popular_side if args.side == "popular" else ours_side
    start = time.perf_counter()
    end = run(args, args.data, args.out, clock)
    print(json.dumps({"epochs": clock.epochs, "end": end, "wall": time.perf_counter() - start}))


def mean_after_first(epochs, phase):
    rest = epochs[1:] or epochs
    return sum(e[phase] for e in rest) / len(rest)


def main_():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="./data")
    p.add_argument("--gpu", type=int, default=None, help="a GPU's index; the CPU without")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eval-freq", type=int, default=10, help="as the popular default")
    p.add_argument("--workers", type=int, default=4, help="the popular -j (its default: 4)")
    p.add_argument("--train-images", type=int, default=60000)
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--side", choices=["popular", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return side(args)
    if args.gpu is not None:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", str(args.gpu))
        args.gpu = 0
    device = (torch.cuda.get_device_name(args.gpu) if args.gpu is not None
              else f"CPU, {torch.get_num_threads()} threads")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = bench_plot.subset(args.data_root, os.path.join(tmp, "data"), args.train_images,
                                 args.test_images)
        for name in ("popular", "ours"):
            command = [sys.executable, os.path.abspath(__file__), "--side", name, "--data", data,
                       "--out", os.path.join(tmp, name), "--epochs", str(args.epochs),
                       "--eval-freq", str(args.eval_freq), "--workers", str(args.workers)]
            command += ["--gpu", "0"] if args.gpu is not None else []
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"the {name} side failed:\n{done.stderr[-3000:]}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"torch {torch.__version__}, {device}; {args.epochs} epochs of `main.py --plot` "
          f"(popular defaults, --eval-freq {args.eval_freq}) on {args.train_images:,} training "
          f"and {args.test_images:,} test MNIST images; seconds an epoch, mean of epochs 2-"
          f"{args.epochs}\n")
    print("| phase | popular loop (-j %d) | main.py |" % args.workers)
    print("|---|---:|---:|")
    totals = {}
    for phase in PHASES:
        cells = [mean_after_first(results[n]["epochs"], phase) for n in ("popular", "ours")]
        print(f"| {phase} | {cells[0]:.3f} | {cells[1]:.3f} |")
    for name in ("popular", "ours"):
        totals[name] = sum(mean_after_first(results[name]["epochs"], ph) for ph in PHASES)
    print(f"| **epoch** | **{totals['popular']:.3f}** | **{totals['ours']:.3f}** |")
    print(f"\nmain.py is {totals['popular'] / totals['ours']:.2f}x the popular loop's speed "
          f"an epoch; whole run (process start to end) {results['popular']['wall']:.1f} s "
          f"against {results['ours']['wall']:.1f} s")
    for what, seconds in results["ours"]["end"].items():
        print(f"main.py, once at the end: {what} {seconds:.3f} s")


if __name__ == "__main__":
    main_()
