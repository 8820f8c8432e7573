"""Redraw a committed run's curves.png and roc.png, which are not committed (log/README.md).

    python experiments/redraw.py log/study/lfw-fold1-lam0-min2             # into that folder
    python experiments/redraw.py log/study/mnist-d2-lam* --out-dir /tmp/figures

curves.png comes from metrics.csv, as main.py draws it after each evaluation. roc.png comes
from what the run keeps of its last evaluation: an LFW run's pair_scores.json.gz (its test
pairs), or a 2-D run's test_features.pt (main.py's 6,000 sampled pairs of the seen classes,
and of the unseen ones when some were held out). Other runs keep neither: curves only.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import evaluation  # noqa: E402
import utils  # noqa: E402


def dataset_of(run_dir):
    """The dataset a run trained on, from its log's name (log_<dataset>.txt)."""
    logs = [f for f in os.listdir(run_dir) if f.startswith("log_") and f.endswith(".txt")]
    return logs[0][len("log_"):-len(".txt")] if logs else "run"


def roc_curves(run_dir):
    """(curves {name: (fpr, tpr)}, title) of the run's last evaluation, or None."""
    scores = os.path.join(run_dir, "pair_scores.json.gz")
    if os.path.exists(scores):
        record = utils.load_pair_scores(scores)
        figures = evaluation.pair_scores_figures(record)
        return ({f"LFW {record['split']}": (figures["fpr"], figures["tpr"])},
                "lfw {}, epoch {}: ROC of its {} test pairs, cosine".format(
                    record["split"], record["epoch"], len(record["pairs"])))
    path = os.path.join(run_dir, "test_features.pt")
    if not os.path.exists(path):
        return None
    saved = torch.load(path, weights_only=True)
    x, y, k = saved["features"], saved["labels"], saved["num_seen"]
    seen = y < k
    splits = [("seen classes" if (~seen).any() else "test set", seen)]
    if (~seen).any():
        splits.append(("held-out classes", ~seen))
    curves = {}
    for name, mask in splits:
        pairs = evaluation.verification_pairs(y[mask], evaluation.NUM_PAIRS,
                                              seed=evaluation.PAIRS_SEED)
        v = evaluation.verification_metrics(x[mask], y[mask], pairs)
        curves[name] = (v["fpr"], v["tpr"])
    return curves, "{}, epoch {}: ROC of {} test pairs, cosine".format(
        dataset_of(run_dir), saved["epoch"], evaluation.NUM_PAIRS)


def redraw(run_dir, out_dir):
    """Draw the run's figures into out_dir; returns the names written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    metrics = os.path.join(run_dir, "metrics.csv")
    if os.path.exists(metrics):
        utils.plot_curves(metrics, os.path.join(out_dir, "curves.png"))
        written.append("curves.png")
    roc = roc_curves(run_dir)
    if roc is not None:
        utils.plot_roc(roc[0], os.path.join(out_dir, "roc.png"), roc[1])
        written.append("roc.png")
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="a run's folder, e.g. log/study/<run>")
    p.add_argument("--out-dir", default=None,
                   help="write into OUT_DIR/<run name>/ instead of each run's own folder")
    args = p.parse_args(argv)
    for run_dir in args.runs:
        if not os.path.isdir(run_dir):
            p.error(f"{run_dir}: no such run folder")
        out = run_dir if args.out_dir is None else os.path.join(
            args.out_dir, os.path.basename(os.path.normpath(run_dir)))
        written = redraw(run_dir, out)
        print(f"{run_dir}: {', '.join(written) or 'nothing to draw'}"
              + (f" in {out}" if written else ""))


if __name__ == "__main__":
    main()
