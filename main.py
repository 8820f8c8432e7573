"""Train LeNet++ on MNIST with softmax + center loss and watch the 2-D features cluster.

    python main.py --gpu 0 --plot            # as the popular implementation
    python main.py --amp --plot              # bf16 autocast: for GPUs and bf16-capable CPUs
    python main.py --weight-cent 0 --plot    # softmax only, for comparison
    python main.py --resume log/checkpoint.pth.tar   # continue an interrupted run

Same flags, defaults, training and console output as KaiyangZhou/pytorch-center-loss,
plus checkpoints, resuming, the paper's center update, feature statistics and GIFs.
"""
import argparse
import datetime
import math
import os
import sys
import time

import torch
from torch import nn

import datasets
import models
import utils
from center_loss import CenterLoss


def _typed(kind, test, allowed):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text} is not allowed: must be {allowed}")
        return value
    return parse


positive_int = _typed(int, lambda v: v > 0, "a positive integer")
nonneg_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
nonneg_float = _typed(float, lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0")
positive_float = _typed(float, lambda v: v > 0 and math.isfinite(v), "a finite number > 0")


def get_parser():
    p = argparse.ArgumentParser(description="Softmax + center loss on MNIST (LeNet++)")
    # dataset
    p.add_argument("-d", "--dataset", type=str, default="mnist", choices=sorted(datasets.DATASETS))
    p.add_argument("-j", "--workers", default=4, type=nonneg_int,
                   help="kept for compatibility; batches come from memory (default: 4)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--data-root", type=str, default="./data",
                   help="folder holding MNIST/raw or FashionMNIST/raw; downloaded there if missing")
    # optimization
    p.add_argument("--lr-model", type=nonneg_float, default=0.001, help="learning rate for model")
    p.add_argument("--lr-cent", type=nonneg_float, default=0.5,
                   help="learning rate for center loss (the paper's alpha with --center-update paper)")
    p.add_argument("--weight-cent", type=nonneg_float, default=1,
                   help="weight lambda of the center loss; 0 trains softmax only")
    p.add_argument("--center-update", type=str, default="grad", choices=["grad", "paper"],
                   help="grad: gradient of the loss (popular implementation); paper: eq. 4")
    p.add_argument("--max-epoch", type=positive_int, default=100)
    p.add_argument("--stepsize", type=nonneg_int, default=20, help="lr decay period; 0: no decay")
    p.add_argument("--gamma", type=positive_float, default=0.5, help="learning rate decay")
    # model
    p.add_argument("--model", type=str, default="cnn", choices=sorted(models.MODELS))
    p.add_argument("--feat-dim", type=positive_int, default=2,
                   help="feature dimension; plots show a 2-D projection when > 2")
    # misc
    p.add_argument("--eval-freq", type=int, default=10, help="evaluate every N epochs (and at the end)")
    p.add_argument("--print-freq", type=positive_int, default=50)
    p.add_argument("--gpu", type=str, default="0", help="sets CUDA_VISIBLE_DEVICES")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--use-cpu", action="store_true")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast and channels_last (CPU and CUDA)")
    p.add_argument("--save-dir", type=str, default="log")
    p.add_argument("--resume", type=str, default="", metavar="PATH",
                   help="continue from a checkpoint, e.g. log/checkpoint.pth.tar")
    p.add_argument("--plot", action="store_true", help="plot features every epoch, and GIFs")
    return p


class NonFiniteLoss(RuntimeError):
    pass


def forward(model, data, args):
    """The model on one batch; with --amp in bf16 autocast, channels_last to match the
    weights' layout (set in build()) so convolutions take the fast path."""
    if args.amp:
        data = data.contiguous(memory_format=torch.channels_last)
    with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=args.amp):
        return model(data)


def train_step(model, criterion_xent, criterion_cent, optimizer_model, optimizer_cent,
               data, labels, args):
    """One step of the popular script: softmax + lambda * center loss, the model's SGD step,
    then the centers' gradient scaled by 1/lambda and their own SGD step.
    Returns the features and [loss, xent, lambda * center loss] as floats."""
    features, outputs = forward(model, data, args)
    loss_xent = criterion_xent(outputs.float(), labels)  # autocast would do the same upcast
    # --weight-cent 0 is softmax only: no center loss term, and no division by 0 below.
    if args.weight_cent > 0:
        loss_cent = args.weight_cent * criterion_cent(features, labels)
    else:
        loss_cent = torch.zeros((), device=data.device)
    loss = loss_xent + loss_cent
    # Under torchrun: the global batch's mean, so every rank sees the same values.
    values = utils.all_average(torch.stack([loss, loss_xent, loss_cent]).detach())
    values = values.tolist()  # one sync per batch
    if not math.isfinite(values[0]):
        raise NonFiniteLoss(f"loss is {values[0]}")  # before the step spoils the weights
    optimizer_model.zero_grad()
    optimizer_cent.zero_grad()
    loss.backward()
    optimizer_model.step()
    if args.weight_cent > 0:
        # by doing so, weight_cent would not impact on the learning of centers
        for param in criterion_cent.parameters():
            param.grad.data *= (1. / args.weight_cent)
        optimizer_cent.step()
    return features, values


def train(model, criterion_xent, criterion_cent, optimizer_model, optimizer_cent,
          trainloader, args, epoch):
    model.train()
    xent_losses, cent_losses, losses = utils.AverageMeter(), utils.AverageMeter(), utils.AverageMeter()
    all_features, all_labels = [], []
    for batch_idx, (data, labels) in enumerate(trainloader):
        try:
            features, values = train_step(model, criterion_xent, criterion_cent,
                                          optimizer_model, optimizer_cent, data, labels, args)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e} at epoch {epoch + 1}, batch {batch_idx + 1}") from None
        n = labels.size(0)
        losses.update(values[0], n)
        xent_losses.update(values[1], n)
        cent_losses.update(values[2], n)
        if args.plot:
            all_features.append(features.detach().float().cpu())
            all_labels.append(labels.cpu())
        if (batch_idx + 1) % args.print_freq == 0:
            print("Batch {}/{}\t Loss {:.6f} ({:.6f}) XentLoss {:.6f} ({:.6f}) CenterLoss {:.6f} ({:.6f})"
                  .format(batch_idx + 1, len(trainloader), losses.val, losses.avg,
                          xent_losses.val, xent_losses.avg, cent_losses.val, cent_losses.avg))
    features = utils.gather(torch.cat(all_features)) if all_features else None
    labels = utils.gather(torch.cat(all_labels)) if all_labels else None
    return losses.avg, xent_losses.avg, cent_losses.avg, features, labels


@torch.no_grad()
def test(model, testloader, args):
    """Accuracy on the whole test set (every rank's shard, under torchrun), and the
    test features for the statistics and plots."""
    model.eval()
    all_features, all_labels, all_correct = [], [], []
    for data, labels in testloader:
        features, outputs = forward(model, data, args)
        all_correct.append((outputs.argmax(1) == labels).cpu())
        all_features.append(features.float().cpu())
        all_labels.append(labels.cpu())
    features, labels, correct = (utils.gather(torch.cat(t))
                                 for t in (all_features, all_labels, all_correct))
    acc = round(correct.sum().item() * 100. / len(correct), 2)
    err = round(100. - acc, 2)
    return acc, err, features, labels


def main(argv=None):
    args = get_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    # Under torchrun each machine runs LOCAL_WORLD_SIZE processes, one per device: the
    # default --gpu 0 would hide all devices but one, so it then keeps them all visible.
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) <= len(args.gpu.split(",")):
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    use_gpu = torch.cuda.is_available() and not args.use_cpu
    if args.resume and not os.path.isfile(args.resume):
        sys.exit(f"error: --resume {args.resume}: no such checkpoint file")
    if args.amp and use_gpu and not torch.cuda.is_bf16_supported():
        sys.exit("error: --amp uses bfloat16 autocast, which this GPU does not support")
    # Under torchrun: one process per device, gloo on CPU, nccl on CUDA.
    rank, world, device = utils.init_distributed(use_gpu)

    os.makedirs(args.save_dir, exist_ok=True)
    if rank == 0:  # only rank 0 prints and writes
        out = utils.Logger(os.path.join(args.save_dir, f"log_{args.dataset}.txt"),
                           mode="a" if args.resume else "w")
    else:
        out = utils.Logger(os.devnull, console=False)
    sys.stdout = out
    try:
        run(args, use_gpu, device, rank, world)
    except NonFiniteLoss as e:
        print(f"Stopped: {e}. The last good checkpoint stays in {args.save_dir}.")
        sys.exit(1)
    finally:
        sys.stdout = out.console
        out.close()
        utils.close_distributed()


def build(args, dataset, use_gpu, device, world):
    """The model, both losses, both optimizers and the scheduler of the popular script."""
    print("Creating model: {}".format(args.model))
    model = models.create(name=args.model, num_classes=dataset.num_classes, feat_dim=args.feat_dim)
    model = model.to(device)
    if args.amp:
        model = model.to(memory_format=torch.channels_last)
    criterion_xent = nn.CrossEntropyLoss()
    criterion_cent = CenterLoss(num_classes=dataset.num_classes, feat_dim=args.feat_dim,
                                use_gpu=use_gpu, update=args.center_update,
                                distributed=world > 1).to(device)
    optimizer_model = torch.optim.SGD(model.parameters(), lr=args.lr_model, weight_decay=5e-04,
                                      momentum=0.9)
    optimizer_cent = torch.optim.SGD(criterion_cent.parameters(), lr=args.lr_cent)
    # step_size 0 (no decay) is a StepLR that never fires, so checkpoints look the same.
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer_model, step_size=args.stepsize or 10**9,
                                                gamma=args.gamma)
    return model, criterion_xent, criterion_cent, optimizer_model, optimizer_cent, scheduler


def state(epoch, model, criterion_cent, optimizer_model, optimizer_cent, scheduler, dataset,
          elapsed_s, args):
    """Everything a bit-identical resume needs, as plain tensors and numbers."""
    return {"epoch": epoch,
            "model": model.state_dict(),
            "center_loss": criterion_cent.state_dict(),
            "optimizer_model": optimizer_model.state_dict(),
            "optimizer_cent": optimizer_cent.state_dict(),
            "scheduler": scheduler.state_dict(),
            "shuffle_rng": dataset.generator.get_state(),
            "cpu_rng": torch.get_rng_state(),
            "elapsed_s": elapsed_s,
            "args": vars(args)}


def run(args, use_gpu, device, rank, world):
    print("==========\nArgs:{}\n==========".format(args))
    if use_gpu:
        print("Currently using GPU: {}".format(args.gpu))
        torch.backends.cudnn.benchmark = True
        torch.cuda.manual_seed_all(args.seed)
    else:
        print("Currently using CPU")
    if world > 1:
        print("Distributed: {} processes, backend {}".format(world, utils.backend()))

    print("Creating dataset: {}".format(args.dataset))
    try:
        dataset = datasets.create(name=args.dataset, batch_size=args.batch_size, use_gpu=use_gpu,
                                  num_workers=args.workers, root=args.data_root, seed=args.seed,
                                  rank=rank, world_size=world, device=device)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    parts = build(args, dataset, use_gpu, device, world)
    model, criterion_xent, criterion_cent, optimizer_model, optimizer_cent, scheduler = parts

    checkpoint_path = os.path.join(args.save_dir, "checkpoint.pth.tar")
    metrics_path = os.path.join(args.save_dir, "metrics.csv")
    start_epoch, elapsed_before = 0, 0.0
    if args.resume:
        ckpt = utils.load_checkpoint(args.resume, device)
        model.load_state_dict(ckpt["model"])
        criterion_cent.load_state_dict(ckpt["center_loss"])
        optimizer_model.load_state_dict(ckpt["optimizer_model"])
        optimizer_cent.load_state_dict(ckpt["optimizer_cent"])
        scheduler.load_state_dict(ckpt["scheduler"])
        dataset.generator.set_state(ckpt["shuffle_rng"])
        torch.set_rng_state(ckpt["cpu_rng"])
        start_epoch, elapsed_before = ckpt["epoch"], ckpt["elapsed_s"]
        if rank == 0:
            utils.truncate_metrics(metrics_path, start_epoch)
        print("Resumed from {} at epoch {}".format(args.resume, start_epoch))
    elif rank == 0 and os.path.exists(metrics_path):
        os.remove(metrics_path)
    # DDP averages the model's gradients over the ranks; CenterLoss(distributed=True)
    # does the same for the centers. Checkpoints hold the plain model's weights.
    trained = utils.wrap_ddp(model, device) if world > 1 else model

    start_time = time.time()
    for epoch in range(start_epoch, args.max_epoch):
        print("==> Epoch {}/{}".format(epoch + 1, args.max_epoch))
        epoch_start = time.time()
        lr = optimizer_model.param_groups[0]["lr"]
        losses = train(trained, criterion_xent, criterion_cent, optimizer_model, optimizer_cent,
                       dataset.trainloader, args, epoch)
        scheduler.step()
        last = epoch + 1 == args.max_epoch
        if (args.eval_freq > 0 and (epoch + 1) % args.eval_freq == 0) or last:
            print("==> Test")
            evaluation = test(model, dataset.testloader, args)
        else:
            evaluation = None
        if rank == 0:
            record(args, dataset, epoch, losses, evaluation, lr, time.time() - epoch_start)
            utils.save_checkpoint(state(epoch + 1, model, criterion_cent, optimizer_model,
                                        optimizer_cent, scheduler, dataset,
                                        elapsed_before + time.time() - start_time, args),
                                  checkpoint_path)

    if world > 1:  # a cheap end-of-run proof that DDP and the centers' sync held
        same = utils.ranks_identical(model, criterion_cent)
        print("Processes in sync: " + ("model and centers identical on all {} ranks".format(world)
                                       if same else "NO, the ranks' weights differ"))
    elapsed = round(elapsed_before + time.time() - start_time)
    elapsed = str(datetime.timedelta(seconds=elapsed))
    print("Finished. Total elapsed time (h:m:s): {}".format(elapsed))


def record(args, dataset, epoch, losses, evaluation, lr, epoch_time):
    """Rank 0's per-epoch output: accuracy and feature statistics, metrics.csv and
    curves.png, and with --plot the feature frames and GIFs."""
    loss, xent, cent, train_features, train_labels = losses
    if args.plot:
        plot_epoch(args, dataset, epoch, "train", train_features, train_labels,
                   evaluation and evaluation[0])
    if evaluation is None:
        return
    acc, err, test_features, test_labels = evaluation
    print("Accuracy (%): {}\t Error rate (%): {}".format(acc, err))
    intra, inter, ratio = utils.feature_stats(test_features, test_labels, dataset.num_classes)
    print("Intra-class spread {:.4f}\t Inter-class separation {:.4f}\t Ratio {:.4f}"
          .format(intra, inter, ratio))
    metrics_path = os.path.join(args.save_dir, "metrics.csv")
    utils.append_metrics(metrics_path, dict(
        epoch=epoch + 1, loss=f"{loss:.6f}", xent_loss=f"{xent:.6f}", center_loss=f"{cent:.6f}",
        accuracy=acc, error_rate=err, intra=f"{intra:.6g}", inter=f"{inter:.6g}",
        ratio=f"{ratio:.6g}", lr_model=lr, epoch_time_s=f"{epoch_time:.1f}"))
    utils.plot_curves(metrics_path, os.path.join(args.save_dir, "curves.png"))
    if args.plot:
        plot_epoch(args, dataset, epoch, "test", test_features, test_labels, acc)


def plot_epoch(args, dataset, epoch, split, features, labels, acc):
    title = "{} {}, epoch {}".format(args.dataset, split, epoch + 1)
    if acc is not None:
        title += ", test accuracy {:.2f}%".format(acc)
    frames = os.path.join(args.save_dir, split)
    utils.plot_features(features, labels, dataset.classes,
                        os.path.join(frames, "epoch_{}.png".format(epoch + 1)), title)
    utils.make_gif(frames, os.path.join(args.save_dir, split + ".gif"))


if __name__ == "__main__":
    main()
