"""The LFW test feature, measured on View 1 checkpoints: how to combine a face's feature
with its mirror image's, and whether to centre or whiten it first.

    python experiments/lfw_test_feature.py --data-root ./data RUN/checkpoint.pth.tar ...

For each checkpoint (an LFW run of main.py), the test features of the image alone, of the
image plus its mirror image (main.py's MIRROR 'sum') and of the two concatenated (the
paper's); then the sum with the trained people's mean subtracted, and PCA-whitened, both
fitted on the trained people's images of the threshold pairs, never on the test people's.
Each verified as main.py does: LFW's test pairs with the threshold chosen on the trained
people's pairs, AUC, TAR@FAR=1e-3 over all pairs of the test people, and the oracle: the
accuracy of the best threshold read off the test pairs (what the protocol does not allow).
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
# Variance added before whitening (features of a BN layer: about unit variance a dimension),
# so that a direction the trained people barely use is not blown up.
WHITEN_EPS = 1e-2


def fitted(x, trained, how):
    """x centred ('mean') or PCA-whitened ('whiten') with statistics of x[trained] only."""
    mean = x[trained].mean(0)
    if how == "mean":
        return x - mean
    centred = x[trained].double() - mean.double()
    cov = centred.T @ centred / (len(centred) - 1)
    eigenvalues, vectors = torch.linalg.eigh(cov)
    return ((x.double() - mean.double()) @ vectors / (eigenvalues + WHITEN_EPS).sqrt()).float()


@torch.no_grad()
def features(path, data_root):
    """{way: test features} of checkpoint `path`, and its dataset."""
    ckpt = utils.load_checkpoint(path, "cpu")
    args = main.get_parser().parse_args(["--use-cpu"])
    vars(args).update({k: v for k, v in ckpt["args"].items() if k in vars(args)})
    args.channels_last, args.amp = True, False
    dataset = datasets.create("lfw", 128, use_gpu=False, root=data_root, seed=args.seed,
                              lfw_split=args.lfw_split, lfw_min_images=args.lfw_min_images,
                              lfw_threshold_people=args.lfw_threshold_people,
                              input_size=args.input_size)
    model = main.build(args, dataset, False, "cpu", 1)[0]
    model.load_state_dict(ckpt["model"])
    model.eval()
    plain, mirrored = [], []
    for data, _ in dataset.testloader:
        plain.append(main.forward(model, data, args)[0].float())
        mirrored.append(main.forward(model, data.flip(3), args)[0].float())
    plain, mirrored = torch.cat(plain), torch.cat(mirrored)
    return {way: evaluation.combine_mirror(plain, mirrored, way) for way in WAYS}, dataset


def main_(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="./data")
    p.add_argument("checkpoints", nargs="+")
    args = p.parse_args(argv)
    print("| run | test feature | LFW accuracy % | AUC | "
          "TAR@FAR=1e-3, all pairs of the test people % | oracle threshold accuracy % |")
    print("|---|---|---:|---:|---:|---:|")
    for path in args.checkpoints:
        by_way, dataset = features(path, args.data_root)
        lfw, labels = dataset.lfw, dataset.testloader.labels
        test = torch.arange(len(labels)) >= lfw["num_threshold_images"]
        by_way["sum - trained people's mean"] = fitted(by_way["sum"], ~test, "mean")
        by_way["sum, PCA-whitened on the trained people"] = fitted(by_way["sum"], ~test,
                                                                   "whiten")
        run = os.path.basename(os.path.dirname(os.path.abspath(path)))
        for way, x in by_way.items():
            v = evaluation.protocol_verification(x, lfw["pairs"], lfw["same"],
                                                 lfw["threshold_pairs"], lfw["threshold_same"])
            a = evaluation.all_pairs_tar_at_far(x[test], labels[test], fars=(1e-3,))
            oracle = evaluation.pair_scores_figures(evaluation.pair_scores_record(
                lfw, dataset.files, v, 0))["best_accuracy"]
            print(f"| {run} | {way} | {100 * v['accuracy']:.2f} | {v['auc']:.4f} | "
                  f"{100 * a['tar'][1e-3]:.2f} | {oracle:.2f} |", flush=True)


if __name__ == "__main__":
    main_()
