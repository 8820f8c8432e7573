"""How to combine a face's feature with its mirror image's, measured on View 1 checkpoints.

    python experiments/lfw_mirror.py --data-root ./data RUN/checkpoint.pth.tar ...

For each checkpoint (an LFW run of main.py), the test features of the image alone, of the
image plus its mirror image (main.py's MIRROR 'sum') and of the two concatenated (the
paper's), each verified as main.py does: LFW's test pairs with the threshold chosen on
the trained people's pairs, AUC, and TAR@FAR=1e-3 over all pairs of the test people.
Prints a markdown table; nothing is written.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import datasets  # noqa: E402
import evaluation  # noqa: E402
import main  # noqa: E402
import utils  # noqa: E402

WAYS = ("none", "sum", "concat")


@torch.no_grad()
def features(path, data_root):
    """{way: test features} of checkpoint `path`, and its dataset."""
    ckpt = utils.load_checkpoint(path, "cpu")
    args = main.get_parser().parse_args(["--use-cpu"])
    vars(args).update({k: v for k, v in ckpt["args"].items() if k in vars(args)})
    args.channels_last, args.amp = True, False
    dataset = datasets.create("lfw", 128, use_gpu=False, root=data_root,
                              lfw_split=args.lfw_split, lfw_min_images=args.lfw_min_images)
    model = main.build(args, dataset, False, "cpu", 1)[0]
    model.load_state_dict(ckpt["model"])
    model.eval()
    plain, mirrored = [], []
    for data, _ in dataset.testloader:
        plain.append(main.forward(model, data, args)[0].float())
        mirrored.append(main.forward(model, data.flip(3), args)[0].float())
    plain, mirrored = torch.cat(plain), torch.cat(mirrored)
    return {way: evaluation.combine_mirror(plain, mirrored, way) for way in WAYS}, dataset


def main_():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="./data")
    p.add_argument("checkpoints", nargs="+")
    args = p.parse_args()
    print("| run | test feature | LFW accuracy % | AUC | "
          "TAR@FAR=1e-3, all pairs of the test people % |")
    print("|---|---|---:|---:|---:|")
    for path in args.checkpoints:
        by_way, dataset = features(path, args.data_root)
        lfw, labels = dataset.lfw, dataset.testloader.labels
        test = torch.arange(len(labels)) >= lfw["num_threshold_images"]
        run = os.path.basename(os.path.dirname(os.path.abspath(path)))
        for way in WAYS:
            x = by_way[way]
            v = evaluation.protocol_verification(x, lfw["pairs"], lfw["same"],
                                                 lfw["threshold_pairs"], lfw["threshold_same"])
            a = evaluation.all_pairs_tar_at_far(x[test], labels[test], fars=(1e-3,))
            print(f"| {run} | {way} | {100 * v['accuracy']:.2f} | {v['auc']:.4f} | "
                  f"{100 * a['tar'][1e-3]:.2f} |", flush=True)


if __name__ == "__main__":
    main_()
