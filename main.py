"""Train with softmax + center loss: LeNet++ on MNIST and watch the 2-D features cluster;
LeNet++ at 128-D on Omniglot; a residual face network (softmax, CosFace or ArcFace) on LFW.

    python main.py --gpu 0 --plot            # as the popular implementation
    python main.py --amp --plot              # bf16 autocast: for GPUs and bf16-capable CPUs
    python main.py --weight-cent 0 --plot    # softmax only, for comparison
    python main.py --resume log/checkpoint.pth.tar   # continue an interrupted run
    python main.py --holdout-classes 6,7,8,9 --plot  # open set: 4 classes never trained on
    python main.py --evaluate --resume log/checkpoint.pth.tar   # evaluate, train nothing
    python main.py -d omniglot --feat-dim 128 --optimizer adam  # 964 characters, 659 unseen
    python main.py -d lfw --data-root DATA    # faces: View 1's recipe (docs/lfw.md)

Same flags, defaults, training and console output as KaiyangZhou/pytorch-center-loss,
plus checkpoints, resuming, the paper's center update, feature statistics and GIFs, and
each evaluation's retrieval and verification figures (evaluation.py) on seen and held-out
classes.
"""
import argparse
import datetime
import math
import os
import shlex
import signal
import sys
import threading
import time

import torch
from torch import nn

import datasets
import evaluation
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """-h shows every flag's default; "off" for switches, "none" for empty or unset
    values (paths, lists, --train-classes)."""

    def _get_help_string(self, action):
        if action.default is None:
            return (action.help or "") + " (default: none)"
        if action.default is False or action.default == "":
            return (action.help or "") + (" (default: off)" if action.default is False
                                          else " (default: none)")
        return super()._get_help_string(action)


def get_parser():
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        epilog="The defaults run 100 epochs, hours on a CPU, and the first epoch ends near "
               "10% test accuracy: the slow start of --lr-model 0.001 (README.md, 'Set up, run, "
               "test'). "
               "Clusters in two epochs (about 10 minutes on a 2-core CPU): --plot "
               "--max-epoch 2 --lr-model 0.01 --center-update paper --stepsize 5 --gamma 0.1.")
    # dataset
    dataset = p.add_argument("-d", "--dataset", type=str, default="mnist",
                             choices=datasets.NAMES, help="dataset to train and test on")
    p.description = ("Train with softmax + center loss (Wen et al., ECCV 2016) on "
                     f"{', '.join(dataset.choices)} (-d): LeNet++ for the glyphs, a residual "
                     "network for LFW's faces. Defaults are the popular implementation's; "
                     "-d lfw's are View 1's face recipe (marked -d lfw below).")
    p.add_argument("-j", "--workers", default=4, type=nonneg_int,
                   help="kept for compatibility; batches come from memory")
    p.add_argument("--batch-size", type=positive_int, default=128, help="global batch size")
    p.add_argument("--data-root", type=str, default="./data",
                   help="folder holding MNIST/raw, FashionMNIST/raw or omniglot-py/ (and "
                        "omniglot-one-shot/all_runs.zip), downloaded there if missing; or "
                        "lfw-py/ with lfw-deepfunneled/ and LFW's six protocol files, put "
                        "there by hand (docs/lfw.md, 'Getting LFW')")
    p.add_argument("--train-classes", type=positive_int, default=None, metavar="K",
                   help="omniglot: train on K of its 964 background characters, drawn with "
                        "--seed (none: all 964); the unseen test stays the 659 evaluation ones. "
                        "lfw: K of the split's people with --lfw-min-images images; the test "
                        "stays the protocol's")
    p.add_argument("--lfw-split", type=str, default="view1", choices=datasets.LFW_SPLITS,
                   metavar="SPLIT",
                   help="lfw: view1 (train on peopleDevTrain, test pairsDevTest: for choosing "
                        "settings) or fold1 ... fold10 (View 2: train on the other nine sets "
                        "of people.txt, test that fold of pairs.txt)")
    p.add_argument("--lfw-min-images", type=positive_int, default=2, metavar="N",
                   help="lfw: the training people with at least N images are the softmax "
                        "classes (1: all of them; 2 was better on View 1, docs/lfw.md); the "
                        "others' images still serve the threshold pairs")
    p.add_argument("--augment", type=str, default="crop-flip", choices=["crop-flip", "strong"],
                   help="lfw: the training images' augmentation: a random 64 x 64 crop of the "
                        "72 x 72 stored and a mirror (crop-flip), or strong: a random resized "
                        "crop, the mirror, colour jitter and random erasing")
    p.add_argument("--input-size", type=int, default=64, choices=datasets.LFW_INPUT_SIZES,
                   help="lfw: the side of the network's input, the same 128 px of face at a "
                        "higher resolution above 64 (the paper: 112 x 96)")
    p.add_argument("--lfw-threshold-people", type=nonneg_int, default=0, metavar="H",
                   help="lfw: hold H of the training people with two or more images out of "
                        "training (drawn with --seed) and choose the verification threshold on "
                        "pairs of their images; 0: on the protocol's pairs, of trained people")
    # optimization
    p.add_argument("--lr-model", type=nonneg_float, default=0.001,
                   help="learning rate for model (-d lfw: 0.1)")
    p.add_argument("--optimizer", type=str, default="sgd", choices=["sgd", "adam"],
                   help="the model's optimizer: sgd (momentum 0.9, as the popular script) or "
                        "adam; both with weight decay 5e-4. The centers always take plain SGD")
    p.add_argument("--lr-cent", type=nonneg_float, default=0.5,
                   help="learning rate for center loss (the paper's alpha with --center-update paper)")
    p.add_argument("--weight-cent", type=nonneg_float, default=1,
                   help="weight lambda of the center loss; 0 trains softmax only (-d lfw: "
                        "0.003)")
    p.add_argument("--center-update", type=str, default="grad", choices=["grad", "paper"],
                   help="grad: gradient of the loss (popular implementation); paper: eq. 4 "
                        "(-d lfw: paper)")
    p.add_argument("--center-feature", type=str, default="raw", choices=["raw", "normalised"],
                   help="what center loss pulls: the feature itself, or its L2-normalised "
                        "direction, which a margin head (--head cosface/arcface) compares")
    p.add_argument("--weight-cent-warmup", type=nonneg_int, default=0, metavar="N",
                   help="ramp lambda up linearly over the first N epochs (0: no ramp)")
    p.add_argument("--max-epoch", type=positive_int, default=100,
                   help="epochs to train (-d lfw: 40)")
    p.add_argument("--lr-schedule", type=str, default="step", choices=["step", "cosine"],
                   help="the model's learning rate: step (x --gamma every --stepsize epochs, "
                        "the popular script's) or cosine (from --lr-model to 0 over "
                        "--max-epoch, per epoch)")
    p.add_argument("--stepsize", type=nonneg_int, default=20,
                   help="lr decay period; 0: no decay (-d lfw: 16)")
    p.add_argument("--gamma", type=positive_float, default=0.5,
                   help="learning rate decay (-d lfw: 0.1)")
    # model
    p.add_argument("--model", type=str, default=None, choices=sorted(models.MODELS),
                   help="cnn: LeNet++, for the 28 x 28 glyphs (the default); resnet10, "
                        "resnet18: residual networks for LFW's 64 x 64 faces (resnet10 the "
                        "default with -d lfw)")
    p.add_argument("--feat-dim", type=positive_int, default=None,
                   help="feature dimension (default 2; 512 with -d lfw, as the paper); plots "
                        "show a 2-D projection when > 2")
    p.add_argument("--head", type=str, default="softmax", choices=models.HEADS,
                   help="the classifier and its loss: softmax (linear + cross entropy), "
                        "cosface or arcface (normalised, with --margin and --scale)")
    p.add_argument("--margin", type=nonneg_float, default=None,
                   help="cosface: the margin m subtracted from the target cosine (default "
                        "0.35); arcface: added to the target angle, in radians (default 0.5)")
    p.add_argument("--scale", type=positive_float, default=64.0,
                   help="cosface, arcface: the scale s of the cosines")
    # misc
    p.add_argument("--eval-freq", type=int, default=10,
                   help="evaluate every N epochs (and at the end; -d lfw: 2)")
    p.add_argument("--print-freq", type=positive_int, default=50,
                   help="print the losses every N batches")
    p.add_argument("--gpu", type=str, default="0", help="sets CUDA_VISIBLE_DEVICES")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--use-cpu", action="store_true",
                   help="train on the CPU even where CUDA is available")
    p.add_argument("--compile", type=str, default="none",
                   choices=["none", "default", "reduce-overhead"],
                   help="torch.compile the model's training forward and backward (the test pass "
                        "stays eager); reduce-overhead adds CUDA graphs on a GPU, against "
                        "kernel-launch cost at small batches")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast and channels_last (CPU and CUDA; on the CPU "
                        "channels_last is the default anyway)")
    p.add_argument("--save-dir", type=str, default="log",
                   help="where the log, metrics, plots and checkpoint go; with --evaluate, "
                        "the checkpoint's folder unless given")
    p.add_argument("--resume", type=str, default="", metavar="PATH",
                   help="continue from a checkpoint, e.g. log/checkpoint.pth.tar")
    p.add_argument("--plot", action="store_true", help="plot features every epoch, and GIFs")
    # open-set evaluation
    p.add_argument("--holdout-classes", type=str, default="", metavar="LIST",
                   help="comma-separated classes left out of training, as indices (6,7,8,9) or "
                        "names (Coat,Shirt); the test set evaluates them as unseen classes")
    p.add_argument("--evaluate", action="store_true",
                   help="with --resume: evaluate that checkpoint, train nothing")
    return p


def parse_holdout(text, dataset):
    """The class indices named in --holdout-classes (indices or the dataset's class
    names, case-insensitive), sorted; ValueError for people otherwise."""
    if dataset in (datasets.OMNIGLOT, datasets.LFW):
        if text.strip():
            raise ValueError(f"--holdout-classes {text}: {dataset} has its own unseen classes, "
                             + ("the 659 characters of its evaluation alphabets"
                                if dataset == datasets.OMNIGLOT else
                                "the test people of its protocol (--lfw-split)"))
        return []
    names = datasets.DATASETS[dataset][3]
    lookup = {name.lower(): j for j, name in enumerate(names)}
    lookup.update({str(j): j for j in range(len(names))})
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t.lower() not in lookup]
    if unknown:
        raise ValueError(f"--holdout-classes {text}: {', '.join(unknown)} is not a class of "
                         f"{dataset}; use indices 0-{len(names) - 1} or names "
                         f"{', '.join(names)}")
    classes = sorted({lookup[t.lower()] for t in items})
    if len(classes) == 1:
        raise ValueError(f"--holdout-classes {text}: hold out at least 2 classes, so that "
                         f"unseen classes can be told apart from each other")
    try:
        datasets.split_classes(len(names), classes)  # the loader's own check: 2 left to train
    except ValueError as e:
        raise ValueError(f"--holdout-classes {text}: {e}") from None
    return classes


class NonFiniteLoss(RuntimeError):
    pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), handled as Ctrl-C: the frames drawn, the
    GIFs written and the checkpoint kept, then exit 143 (128 + SIGTERM)."""


def _terminated(signum, frame):
    raise Terminated()


def forward(model, data, args):
    """The model on one batch; with --amp in bf16 autocast. With args.channels_last
    (set in main()) the batch goes channels_last, to match the weights' layout (set in
    build()) so that convolutions take the same fast path without a conversion."""
    if getattr(args, "channels_last", args.amp):
        data = data.contiguous(memory_format=torch.channels_last)
    with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=args.amp):
        return model(data)


def train_step(model, criterion_xent, criterion_cent, optimizer_model, optimizer_cent,
               data, labels, args, weight_cent=None):
    """One step of the popular script: softmax + lambda * center loss, the model's SGD step,
    then the centers' gradient scaled by 1/lambda and their own SGD step. `weight_cent`:
    this step's lambda (default args.weight_cent; --weight-cent-warmup ramps it).
    Returns the features and [loss, xent, lambda * center loss], a tensor on the device."""
    weight_cent = args.weight_cent if weight_cent is None else weight_cent
    features, outputs = forward(model, data, args)
    loss_xent = criterion_xent(outputs.float(), labels)  # autocast would do the same upcast
    # --weight-cent 0 is softmax only: no center loss term, and no division by 0 below.
    if weight_cent > 0:
        pulled = features
        if getattr(args, "center_feature", "raw") == "normalised":
            # The margin heads see a feature's direction only: pull that to the centers.
            pulled = nn.functional.normalize(features.float(), dim=1)
        loss_cent = weight_cent * criterion_cent(pulled, labels)
    else:
        loss_cent = torch.zeros((), device=data.device)
    loss = loss_xent + loss_cent
    optimizer_model.zero_grad()
    optimizer_cent.zero_grad()
    loss.backward()
    optimizer_model.step()
    if weight_cent > 0:
        # by doing so, weight_cent would not impact on the learning of centers
        for param in criterion_cent.parameters():
            param.grad.data *= (1. / weight_cent)
        optimizer_cent.step()
    # Under torchrun: the global batch's mean, so every rank sees the same values. Left on
    # the device: reading them would make the host wait for the GPU every batch.
    values = utils.all_average(torch.stack([loss, loss_xent, loss_cent]).detach())
    return features, values


def weight_cent_at(args, epoch):
    """λ in epoch `epoch` (0-based): --weight-cent, ramped up linearly over the first
    --weight-cent-warmup epochs (λ/N in the first, the full λ from the N-th on)."""
    warmup = getattr(args, "weight_cent_warmup", 0)
    return args.weight_cent * min(1.0, (epoch + 1) / warmup) if warmup else args.weight_cent


def train(model, criterion_xent, criterion_cent, optimizer_model, optimizer_cent,
          trainloader, args, epoch):
    model.train()
    weight_cent = weight_cent_at(args, epoch)
    meters = utils.LossMeters()
    all_features, all_labels = [], []
    for batch_idx, (data, labels) in enumerate(trainloader):
        features, values = train_step(model, criterion_xent, criterion_cent, optimizer_model,
                                      optimizer_cent, data, labels, args, weight_cent)
        meters.update(values, labels.size(0), batch_idx)
        if args.plot:
            # kept on the device: one copy to the host an epoch, not a sync every batch; a
            # copy of them, as CUDA graphs (--compile reduce-overhead) reuse their outputs
            all_features.append(features.detach().float().clone())
            all_labels.append(labels)
        if (batch_idx + 1) % args.print_freq == 0:  # the one host sync: what the console shows
            (loss, xent, cent), (loss_avg, xent_avg, cent_avg) = read(meters, epoch)
            print("Batch {}/{}\t Loss {:.6f} ({:.6f}) XentLoss {:.6f} ({:.6f}) CenterLoss {:.6f} ({:.6f})"
                  .format(batch_idx + 1, len(trainloader), loss, loss_avg,
                          xent, xent_avg, cent, cent_avg))
    averages = read(meters, epoch)[1]
    features, labels = gather_features(all_features, all_labels)
    return (*averages, features, labels)


def read(meters, epoch):
    """The meters' values and averages; stops the run at a non-finite loss. The weights
    took that step, but the last checkpoint, from the epoch before, is untouched."""
    last, averages, bad = meters.read()
    if bad is not None:
        raise NonFiniteLoss(f"loss is {bad[1]} at epoch {epoch + 1}, batch {bad[0] + 1}")
    return last, averages


def gather_features(all_features, all_labels):
    """An epoch's training features and labels for --plot, from every rank, on the host
    (None, None without --plot): one copy from the device an epoch."""
    if not all_features:
        return None, None
    return utils.gather(torch.cat(all_features).cpu()), utils.gather(torch.cat(all_labels).cpu())


@torch.no_grad()
def test(model, dataset, args):
    """Accuracy on the whole test set (every rank's shard, under torchrun), and the
    test features for the statistics and plots. Labels from dataset.num_classes on are
    unseen classes: the classifier has no output for them, so accuracy counts the
    others. Returns (accuracy %, error %, features, labels, one-shot features or None)."""
    model.eval()
    all_features, all_labels, all_correct = [], [], []
    for data, labels in dataset.testloader:
        features, outputs = forward(model, data, args)
        all_correct.append(outputs.argmax(1) == labels)
        features = features.float()
        if dataset.lfw is not None:  # faces: with the mirror image's feature (docs/lfw.md)
            mirrored = forward(model, data.flip(3), args)[0].float()
            features = evaluation.combine_mirror(features, mirrored)
        all_features.append(features)
        all_labels.append(labels)
    # one copy to the host for the whole test set, not one (and a wait) a batch
    features, labels, correct = (utils.gather(torch.cat(t).cpu())
                                 for t in (all_features, all_labels, all_correct))
    correct = correct[labels < dataset.num_classes]
    acc = round(correct.sum().item() * 100. / len(correct), 2)
    err = round(100. - acc, 2)
    return acc, err, features, labels, one_shot_features(model, dataset, args)


def one_shot_features(model, dataset, args):
    """Features of the one-shot runs' support and query images, (R, W, D) and (R, Q, D),
    normalised as the training images; None without one-shot runs."""
    if dataset.one_shot is None:
        return None
    loader = dataset.trainloader
    out = []
    for key in ("support", "queries"):
        images = dataset.one_shot[key]
        data = datasets.normalise(images.flatten(0, 1), loader.mean, loader.std)
        features, _ = forward(model, data.to(loader.images.device), args)
        out.append(features.float().cpu().view(*images.shape[:2], -1))
    return tuple(out)


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        args.holdout = parse_holdout(args.holdout_classes, args.dataset)
    except ValueError as e:
        parser.error(str(e))
    if args.train_classes is not None and args.dataset not in (datasets.OMNIGLOT, datasets.LFW):
        parser.error(f"--train-classes is for -d {datasets.OMNIGLOT} or {datasets.LFW}, "
                     f"not {args.dataset}")
    given = given_flags(argv)
    try:
        resolve_defaults(args, given)
    except ValueError as e:
        parser.error(str(e))
    torch.manual_seed(args.seed)
    # Under torchrun each machine runs LOCAL_WORLD_SIZE processes, one per device: the
    # default --gpu 0 would hide all devices but one, so it then keeps them all visible.
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) <= len(args.gpu.split(",")):
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    use_gpu = torch.cuda.is_available() and not args.use_cpu
    # channels_last on the CPU: 1.03-1.09x faster fp32 steps here (benchmarks/bench_train.py);
    # on GPUs only with --amp, where it is the tensor cores' layout.
    args.channels_last = args.amp or not use_gpu
    ckpt = load_resume(args, given)  # before anything is written
    if args.evaluate and "save_dir" not in given:
        # Beside the checkpoint evaluated, not into the default log/ of the committed runs.
        args.save_dir = os.path.dirname(args.resume) or "."
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
    # run.json beside the log: how this run was made (command, versions, device, commit),
    # said in words on the log's first lines; a resume or an --evaluate adds its own entry.
    record_path = os.path.join(args.save_dir, "run.json")
    if rank == 0:
        entry = utils.run_record(argv, use_gpu, device, world, args.amp)
        print(utils.describe_run(entry))
        kind = "evaluate" if args.evaluate else "resume" if args.resume else "train"
        record, entry = utils.open_run_record(record_path, entry, kind)
    # The latest checkpoint on disk and its epoch, for the Ctrl-C message.
    progress = {"saved": ckpt["epoch"] if ckpt else None, "path": args.resume}
    start, outcome = time.time(), "error"
    # signal handlers can be set from the main thread only (main() may run in another)
    in_main = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.signal(signal.SIGTERM, _terminated) if in_main else None
    try:
        run(args, ckpt, use_gpu, device, rank, world, progress)
        outcome = "finished"
    except NonFiniteLoss as e:
        outcome = "stopped: non-finite loss"
        print(f"Stopped: {e}. The last good checkpoint stays in {args.save_dir}.")
        sys.exit(1)
    except KeyboardInterrupt as e:
        outcome = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(interrupted_message(args, argv, progress["saved"], progress["path"]))
        sys.exit(143 if isinstance(e, Terminated) else 130)  # 128 + the signal, as a shell
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, on_sigterm)
        if rank == 0:
            utils.close_run_record(record_path, record, entry, time.time() - start, outcome)
        sys.stdout = out.console
        out.close()
        utils.close_distributed()


# `python main.py -d lfw` trains the face recipe chosen on LFW's View 1 (docs/lfw.md,
# experiments/study.py's LFW_RECIPE_RUN): these flags, where not given, take these values
# instead of the popular script's MNIST defaults, which are far from it (lr 0.001, λ 1).
LFW_RECIPE = {"lr_model": 0.1, "weight_cent": 0.003, "center_update": "paper",
              "max_epoch": 40, "stepsize": 16, "gamma": 0.1, "eval_freq": 2}


def resolve_defaults(args, given):
    """The defaults that depend on the dataset: LeNet++ with 2-D features for the glyphs
    (the popular script's), resnet10 with 512-D features and LFW_RECIPE for LFW's faces;
    ValueError for a network that does not take the dataset's images, or an --lfw- flag
    given for another dataset. `given`: the flags on the command line (given_flags)."""
    lfw = args.dataset == datasets.LFW
    if lfw:
        for key, value in LFW_RECIPE.items():
            if key not in given:
                setattr(args, key, value)
    if args.model is None:
        args.model = "resnet10" if lfw else "cnn"
    if args.feat_dim is None:
        args.feat_dim = 512 if lfw else 2
    if args.margin is None:  # each paper's own margin
        args.margin = 0.5 if args.head == "arcface" else 0.35
    shape = models.input_shape(args.model)
    if lfw != (shape[0] == 3):
        takes = "3 x 64 x 64 face crops" if lfw else "1 x 28 x 28 glyphs"
        fits = "resnet10 or resnet18" if lfw else "cnn"
        raise ValueError(f"-d {args.dataset} has {takes}: --model {fits}, not {args.model}")
    for flag in ("lfw_split", "lfw_min_images", "lfw_threshold_people", "augment",
                 "input_size"):
        if flag in given and not lfw:
            raise ValueError(f"--{flag.replace('_', '-')} is for -d lfw, not {args.dataset}")


# Flags that change what a checkpoint's tensors mean: resuming with other values would
# fail in load_state_dict or, worse, silently train the weights on something else.
RESUME_FLAGS = {"dataset": "--dataset", "model": "--model", "feat_dim": "--feat-dim",
                "center_update": "--center-update", "holdout": "--holdout-classes",
                "train_classes": "--train-classes", "optimizer": "--optimizer",
                "lfw_split": "--lfw-split", "lfw_min_images": "--lfw-min-images",
                "lfw_threshold_people": "--lfw-threshold-people", "head": "--head",
                "lr_schedule": "--lr-schedule", "center_feature": "--center-feature",
                "augment": "--augment", "input_size": "--input-size"}


def given_flags(argv):
    """The destinations of the flags given on the command line (not left at defaults)."""
    parser = get_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def load_resume(args, given):
    """The --resume checkpoint (on the CPU), or None; one line and exit 1 when the file
    is missing, is not a checkpoint, or was made with other RESUME_FLAGS. With
    --evaluate, the RESUME_FLAGS not `given` are taken from the checkpoint."""
    if not args.resume:
        if args.evaluate:
            sys.exit("error: --evaluate needs --resume CHECKPOINT, the model to evaluate")
        return None
    if not os.path.isfile(args.resume):
        sys.exit(f"error: --resume {args.resume}: no such checkpoint file")
    try:
        ckpt = utils.load_checkpoint(args.resume, "cpu")
    except ValueError as e:
        sys.exit(f"error: --resume {e}")
    # Checkpoints older than a flag hold its default.
    saved = dict({"train_classes": None, "optimizer": "sgd", "lfw_split": "view1",
                  "lfw_min_images": 1, "lfw_threshold_people": 0, "head": "softmax",
                  "lr_schedule": "step", "center_feature": "raw", "augment": "crop-flip",
                  "input_size": 64},
                 **ckpt["args"],
                 holdout=ckpt.get("holdout_classes", []))
    if args.evaluate:  # evaluating needs no flags repeated, only none contradicted
        for key in [*RESUME_FLAGS, "weight_cent", "seed"]:  # seed: which --train-classes
            if (key if key != "holdout" else "holdout_classes") not in given and key in saved:
                setattr(args, key, saved[key])
        args.holdout_classes = ",".join(map(str, args.holdout))
    # The checkpoint's memory layout: the same rounding, so resuming stays bit-identical.
    args.channels_last = saved.get("channels_last", saved.get("amp", False))
    show = lambda key, v: (",".join(map(str, v)) or "none") if key == "holdout" else v
    differ = [f"{flag} {show(key, saved.get(key))} (now {show(key, getattr(args, key))})"
              for key, flag in RESUME_FLAGS.items() if saved.get(key) != getattr(args, key)]
    if differ:
        sys.exit(f"error: --resume {args.resume} was made with {'; '.join(differ)}: pass the "
                 f"checkpoint's values, or leave out --resume to start a new run")
    return ckpt


def interrupted_message(args, argv, saved_epoch, path):
    """What Ctrl-C leaves on disk and the command that continues from it."""
    if args.evaluate:
        return "Interrupted: evaluation stopped, nothing was written to the checkpoint."
    if saved_epoch is None:
        return "Interrupted before the first epoch ended: no checkpoint was saved."
    words = list(sys.argv[1:] if argv is None else argv)
    for i, word in enumerate(words):  # drop an earlier --resume PATH / --resume=PATH
        if word == "--resume":
            del words[i:i + 2]
            break
        if word.startswith("--resume="):
            del words[i]
            break
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return (f"Interrupted. The checkpoint of epoch {saved_epoch} is in {path}; continue "
                f"with the same torchrun command plus --resume {shlex.quote(path)}")
    command = shlex.join(["python", "main.py", *words, "--resume", path])
    return (f"Interrupted. The checkpoint of epoch {saved_epoch} is in {path}; "
            f"continue with:\n  {command}")


def build(args, dataset, use_gpu, device, world):
    """The model, both losses, both optimizers and the scheduler of the popular script."""
    print("Creating model: {}".format(args.model))
    sized = {"input_size": args.input_size} if args.model != "cnn" else {}
    model = models.create(name=args.model, num_classes=dataset.num_classes,
                          feat_dim=args.feat_dim, head=args.head, **sized)
    model = model.to(device)
    if getattr(args, "channels_last", args.amp):
        model = model.to(memory_format=torch.channels_last)
    if args.head != "softmax":
        criterion_xent = models.margin_loss(args.head, args.scale, args.margin)
    else:
        criterion_xent = nn.CrossEntropyLoss()
    criterion_cent = CenterLoss(num_classes=dataset.num_classes, feat_dim=args.feat_dim,
                                use_gpu=use_gpu, update=args.center_update,
                                distributed=world > 1).to(device)
    if args.optimizer == "adam":  # trains 964 Omniglot classes where SGD stays at chance
        optimizer_model = torch.optim.Adam(model.parameters(), lr=args.lr_model,
                                           weight_decay=5e-04)
    else:
        optimizer_model = torch.optim.SGD(model.parameters(), lr=args.lr_model,
                                          weight_decay=5e-04, momentum=0.9)
    optimizer_cent = torch.optim.SGD(criterion_cent.parameters(), lr=args.lr_cent)
    if args.lr_schedule == "cosine":  # the model's only: the centers keep their alpha
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer_model,
                                                               T_max=args.max_epoch)
    else:  # step_size 0 (no decay) is a StepLR that never fires: checkpoints look the same
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer_model,
                                                    step_size=args.stepsize or 10**9,
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
            "args": {k: v for k, v in vars(args).items() if k != "holdout"},
            "holdout_classes": args.holdout,
            "classes": dataset.classes}


# Set by main() for its own use (not flags), and the flags --evaluate ignores.
INTERNAL = ("holdout", "channels_last")
TRAINING_ONLY = ("lr_model", "lr_cent", "max_epoch", "stepsize", "gamma", "eval_freq",
                 "print_freq", "optimizer", "margin", "scale", "lr_schedule",
                 "weight_cent_warmup")


def shown_args(args):
    """The popular Args:Namespace(...) of the user's settings: no internal fields, and
    under --evaluate only the flags that apply to it."""
    hidden = INTERNAL + (TRAINING_ONLY if args.evaluate else ())
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in hidden})


def run(args, ckpt, use_gpu, device, rank, world, progress):
    print("==========\nArgs:{}\n==========".format(shown_args(args)))
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
                                  rank=rank, world_size=world, device=device,
                                  holdout=args.holdout, train_classes=args.train_classes,
                                  lfw_split=args.lfw_split, lfw_min_images=args.lfw_min_images,
                                  lfw_threshold_people=args.lfw_threshold_people,
                                  augment=args.augment, input_size=args.input_size)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    if ckpt is not None and ckpt.get("classes", dataset.classes) != dataset.classes:
        sys.exit(f"error: --resume {args.resume} was trained on other classes than --seed "
                 f"{args.seed} draws: pass the checkpoint's --seed {ckpt['args'].get('seed')}")
    if dataset.one_shot is not None:
        print("Training on {} images of {} classes; testing on {} images: {} of the seen "
              "classes, {} of the {}; one-shot: {} runs of {}-way".format(
                  len(dataset.trainloader.labels), dataset.num_classes,
                  len(dataset.testloader.labels), int((dataset.testloader.labels <
                                                       dataset.num_classes).sum()),
                  int((dataset.testloader.labels >= dataset.num_classes).sum()),
                  dataset.unseen_name, *dataset.one_shot["support"].shape[:2]))
    if dataset.lfw is not None:
        print(lfw_summary(dataset, args))
    if args.holdout:
        seen, unseen = dataset.classes[:dataset.num_classes], dataset.classes[dataset.num_classes:]
        print("Held-out classes {} ({}): not trained on, evaluated as unseen classes; "
              "training on {} images of classes {} ({})".format(
                  ",".join(map(str, args.holdout)), ", ".join(unseen),
                  len(dataset.trainloader.labels),
                  ",".join(str(c) for c in range(len(dataset.classes)) if c not in args.holdout),
                  ", ".join(seen)))
    parts = build(args, dataset, use_gpu, device, world)
    model, criterion_xent, criterion_cent, optimizer_model, optimizer_cent, scheduler = parts

    checkpoint_path = os.path.join(args.save_dir, "checkpoint.pth.tar")
    metrics_path = os.path.join(args.save_dir, "metrics.csv")
    fields = utils.metrics_fields(dataset.open_set, dataset.one_shot is not None,
                                  dataset.lfw is not None)
    start_epoch, elapsed_before = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        criterion_cent.load_state_dict(ckpt["center_loss"])
        optimizer_model.load_state_dict(ckpt["optimizer_model"])
        optimizer_cent.load_state_dict(ckpt["optimizer_cent"])
        scheduler.load_state_dict(ckpt["scheduler"])
        dataset.generator.set_state(ckpt["shuffle_rng"])
        torch.set_rng_state(ckpt["cpu_rng"])
        start_epoch, elapsed_before = ckpt["epoch"], ckpt["elapsed_s"]
    if args.evaluate:
        print("Evaluating {} (epoch {}); nothing is trained".format(args.resume, start_epoch))
        result = test(model, dataset, args)
        if rank == 0:
            report(args, dataset, start_epoch - 1, result, criterion_cent)
        print(outputs_line(args, start_epoch))
        return
    if ckpt is not None:
        if rank == 0:
            utils.truncate_metrics(metrics_path, start_epoch, fields)
        print("Resumed from {} at epoch {}".format(args.resume, start_epoch))
    elif rank == 0 and os.path.exists(metrics_path):
        os.remove(metrics_path)
    # DDP averages the model's gradients over the ranks; CenterLoss(distributed=True)
    # does the same for the centers. Checkpoints hold the plain model's weights.
    trained = utils.wrap_ddp(model, device) if world > 1 else model
    if getattr(args, "compile", "none") != "none":  # the same weights: checkpoints stay plain
        trained = torch.compile(trained, mode=args.compile)

    # --plot's frames are drawn in a background process while the next epoch trains, and
    # the GIFs assembled once, at the end or at an interruption (utils.Plotter).
    plotter = utils.Plotter(PLOTS_IN_BACKGROUND) if args.plot and rank == 0 else None
    start_time = time.time()
    try:
        for epoch in range(start_epoch, args.max_epoch):
            print("==> Epoch {}/{}".format(epoch + 1, args.max_epoch))
            epoch_start = time.time()
            lr = optimizer_model.param_groups[0]["lr"]
            losses = train(trained, criterion_xent, criterion_cent, optimizer_model,
                           optimizer_cent, dataset.trainloader, args, epoch)
            scheduler.step()
            last = epoch + 1 == args.max_epoch
            if (args.eval_freq > 0 and (epoch + 1) % args.eval_freq == 0) or last:
                print("==> Test")
                result = test(model, dataset, args)
            else:
                result = None
            if rank == 0:
                record(args, dataset, epoch, losses, result, criterion_cent, lr,
                       time.time() - epoch_start, fields, plotter)
                utils.save_checkpoint(state(epoch + 1, model, criterion_cent, optimizer_model,
                                            optimizer_cent, scheduler, dataset,
                                            elapsed_before + time.time() - start_time, args),
                                      checkpoint_path)
            progress.update(saved=epoch + 1, path=checkpoint_path)
            print(epoch_time_line(epoch, args.max_epoch, time.time() - epoch_start))
    finally:
        if plotter is not None:  # every frame drawn and both GIFs written, whatever happened
            plotter.close()

    if world > 1:  # a cheap end-of-run proof that DDP and the centers' sync held
        same = utils.ranks_identical(model, criterion_cent)
        print("Processes in sync: " + ("model and centers identical on all {} ranks".format(world)
                                       if same else "NO, the ranks' weights differ"))
    elapsed = round(elapsed_before + time.time() - start_time)
    elapsed = str(datetime.timedelta(seconds=elapsed))
    print("Finished. Total elapsed time (h:m:s): {}".format(elapsed))
    print(outputs_line(args, args.max_epoch))


def epoch_time_line(epoch, max_epoch, seconds):
    """How long the epoch took (training, test, plots and checkpoint), and what the
    epochs left would take at that pace: a CPU run of the defaults takes hours."""
    seconds = round(seconds, 1)  # the estimate is of the time shown, not a hidden one
    line = "Epoch {}/{} took {:.1f} s".format(epoch + 1, max_epoch, seconds)
    left = max_epoch - epoch - 1
    if left:
        line += "; {} {} left: about {} (h:m:s) at this pace".format(
            left, "epoch" if left == 1 else "epochs",
            datetime.timedelta(seconds=round(left * seconds)))
    return line


def outputs_line(args, epoch):
    """The last line of a run: the folder and the files this run wrote there. Names are
    kept only where the file exists (LFW draws no test scatter)."""
    if args.evaluate:  # beside the checkpoint: the log is appended to, the rest rewritten
        names = ["run.json", "roc.png", "pair_scores.json.gz", "test_features.pt"]
        if args.plot:
            names.append("evaluate_test_epoch_{}.png".format(epoch))
    else:
        names = ["checkpoint.pth.tar", "metrics.csv", "run.json", "curves.png", "roc.png",
                 "pair_scores.json.gz", "test_features.pt"]
        if args.plot:
            names += ["train.gif", "test.gif"]
    names = ["log_{}.txt".format(args.dataset)] + [
        n for n in names if os.path.exists(os.path.join(args.save_dir, n))]
    line = "Outputs in {}: {}".format(os.path.join(args.save_dir, ""), ", ".join(names))
    frames = [split + "/" for split in ("train", "test")
              if args.plot and not args.evaluate and split + ".gif" in names]
    if frames:
        line += " (one frame per epoch in {})".format(" and ".join(frames))
    return line


def record(args, dataset, epoch, losses, result, criterion_cent, lr, epoch_time, fields,
           plotter=None):
    """Rank 0's per-epoch output: the evaluation's report, metrics.csv and curves.png,
    and with --plot the training features' frame and GIF."""
    loss, xent, cent, train_features, train_labels = losses
    if args.plot:
        plot_epoch(args, dataset, epoch, "train", train_features, train_labels, None,
                   criterion_cent, plotter)
    if result is None:
        return
    row = report(args, dataset, epoch, result, criterion_cent, plotter)
    row.update(epoch=epoch + 1, loss=f"{loss:.6f}", xent_loss=f"{xent:.6f}",
               center_loss=f"{cent:.6f}", lr_model=lr, epoch_time_s=f"{epoch_time:.1f}")
    metrics_path = os.path.join(args.save_dir, "metrics.csv")
    utils.append_metrics(metrics_path, row, fields)
    utils.plot_curves(metrics_path, os.path.join(args.save_dir, "curves.png"))


def report(args, dataset, epoch, result, criterion_cent, plotter=None):
    """Print one evaluation (accuracy, feature statistics, retrieval and verification of
    the seen and the held-out classes), save the test features and roc.png, and plot the
    test features with --plot. Returns the metrics.csv columns it measured."""
    if dataset.lfw is not None:
        return report_lfw(args, dataset, epoch, result, criterion_cent)
    acc, err, features, labels, one_shot = result
    k = dataset.num_classes
    seen = labels < k
    row = evaluation.report_seen("Accuracy (%)", acc, err, features, labels, k)
    curves = {}
    splits = [("", "seen classes" if dataset.open_set else "test set", seen)]
    if dataset.open_set:
        splits.append(("unseen_", dataset.unseen_name, ~seen))
    for prefix, name, mask in splits:
        figures, roc = evaluation.measure(features[mask], labels[mask], name)
        row.update({prefix + key: value for key, value in figures.items()})
        curves[name] = roc
    if one_shot is not None:
        row.update(evaluation.measure_one_shot(*one_shot, dataset.one_shot["answers"]))
    title = "{}, epoch {}: ROC of {} test pairs, cosine".format(args.dataset, epoch + 1,
                                                                evaluation.NUM_PAIRS)
    utils.plot_roc(curves, os.path.join(args.save_dir, "roc.png"), title)
    centers = criterion_cent.centers.detach().float().cpu()
    torch.save({"features": features, "labels": labels, "classes": dataset.classes,
                "num_seen": k, "holdout_classes": args.holdout, "centers": centers,
                "epoch": epoch + 1, "accuracy": acc, "files": dataset.files},
               os.path.join(args.save_dir, "test_features.pt"))
    if args.plot:
        plot_epoch(args, dataset, epoch, "test", features, labels, acc, criterion_cent, plotter)
    return row


def lfw_summary(dataset, args):
    """The line that says who LFW's split trains on and what it tests."""
    lfw, k = dataset.lfw, dataset.num_classes
    test = dataset.testloader.labels[lfw["num_threshold_images"]:]
    held = len(lfw.get("threshold_people", []))
    left_out = len(lfw["people_not_classes"]) - held
    few = f"fewer than {args.lfw_min_images} images"
    if not left_out:
        why = ""
    elif args.train_classes is None:
        why = f" ({left_out:,} with {few} are no class)"
    else:
        why = (f" ({left_out:,} others are no class: {few}, or not among the "
               f"--train-classes {args.train_classes} drawn)")
    return ("LFW {}: training on {:,} images of {:,} people{}; testing {:,} pairs ({:,} "
            "matched) of {:,} people never trained on ({:,} images); the threshold is chosen "
            "on {:,} pairs of {}".format(
                lfw["split"], len(dataset.trainloader.labels), k, why, len(lfw["pairs"]),
                int(lfw["same"].sum()), len(dataset.classes) - k, len(test),
                len(lfw["threshold_pairs"]), evaluation.threshold_people(lfw)))


def report_lfw(args, dataset, epoch, result, criterion_cent):
    """report() for LFW: evaluation.measure_lfw's figures of the test people; roc.png,
    pair_scores.json.gz (what re-checks the figures: KB, committed with a reference run)
    and test_features.pt (the test pairs' images only, MB: not committed). Returns the
    metrics.csv values."""
    acc, err, features, labels, _ = result
    lfw = dataset.lfw
    # The only class-labelled images at test time are training images (the threshold
    # pairs'), centre-cropped: a training accuracy, not a test one.
    row = evaluation.report_seen("Accuracy on trained people's images (%)", acc, err,
                                 features, labels, dataset.num_classes)
    figures, v = evaluation.measure_lfw(features, labels, lfw, dataset.unseen_name)
    row.update(figures)
    title = "lfw {}, epoch {}: ROC of its {} test pairs, cosine".format(
        lfw["split"], epoch + 1, len(lfw["pairs"]))
    utils.plot_roc({f"LFW {lfw['split']}": (v["fpr"], v["tpr"])},
                   os.path.join(args.save_dir, "roc.png"), title)
    utils.save_pair_scores(evaluation.pair_scores_record(lfw, dataset.files, v, epoch + 1),
                           os.path.join(args.save_dir, "pair_scores.json.gz"))
    # The test pairs' images only, in float16: about a megabyte for a View 2 fold.
    used, pairs = torch.unique(lfw["pairs"], return_inverse=True)
    torch.save({"features": features[used].half(), "labels": labels[used],
                "files": [dataset.files[i] for i in used.tolist()], "pairs": pairs,
                "same": lfw["same"], "threshold": v["threshold"], "split": lfw["split"],
                "mirror": evaluation.MIRROR, "trained_people": lfw["trained_people"],
                "epoch": epoch + 1, "accuracy": acc},
               os.path.join(args.save_dir, "test_features.pt"))
    return row


# Whether --plot draws in a background process (utils.Plotter); False draws each frame in
# the training process, as before, with the same bytes (a test compares the two).
PLOTS_IN_BACKGROUND = True


def plot_epoch(args, dataset, epoch, split, features, labels, acc, criterion_cent,
               plotter=None):
    """The epoch's frame of `split` (train/test) through `plotter`, or with --evaluate one
    picture beside the checkpoint, drawn at once (no plotter)."""
    if split == "train":
        # Gathered batch by batch while the weights moved: no test figure belongs here.
        title = "{} training features, epoch {} (collected while training)".format(
            args.dataset, epoch + 1)
    else:
        title = "{} test features, epoch {}".format(args.dataset, epoch + 1)
        if acc is not None:
            title += ", test accuracy {:.2f}%".format(acc)
    # The centers mean something only when center loss trains them. A copy: the drawing
    # process reads the tensor after the next steps have moved the live centers.
    centers = (criterion_cent.centers.detach().float().cpu().clone() if args.weight_cent > 0
               else None)
    frames = os.path.join(args.save_dir, split)
    if args.evaluate:  # one picture beside the run's outputs, no frame of its GIF
        path = os.path.join(args.save_dir, "evaluate_{}_epoch_{}.png".format(split, epoch + 1))
        utils.plot_features(features, labels, dataset.classes, path, title,
                            dataset.num_classes, centers)
        return
    path = os.path.join(frames, "epoch_{}.png".format(epoch + 1))
    plotter.frame(frames, os.path.join(args.save_dir, split + ".gif"), features, labels,
                  dataset.classes, path, title, dataset.num_classes, centers)


if __name__ == "__main__":
    main()
