"""What LFW's threshold costs: each run's accuracy at its threshold (chosen on pairs of the
people it trained on, as the protocol's View 2 does with the other nine folds) against the
best accuracy any threshold would give on its test pairs (an oracle: read off the very pairs
it is scored on, which the protocol does not allow), from the committed pair scores.

    python experiments/lfw_threshold.py                  # every log/*/lfw-*/ run with scores
    python experiments/lfw_threshold.py log/study/lfw-fold*

The gap is an upper bound of what a better-placed threshold could add, for it fits the test
pairs themselves.
"""
import glob
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import evaluation  # noqa: E402
import utils  # noqa: E402


def main(argv=None):
    runs = (argv if argv is not None else sys.argv[1:]) or sorted(
        os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "log", "*", "lfw-*",
                                                           "pair_scores.json.gz")))
    print("| run | accuracy % | oracle % | gap (points) | threshold | oracle's |")
    print("|---|---:|---:|---:|---:|---:|")
    gaps = {"View 1": [], "View 2": []}
    for run in runs:
        record = utils.load_pair_scores(os.path.join(run, "pair_scores.json.gz"))
        f = evaluation.pair_scores_figures(record)
        gap = f["best_accuracy"] - f["accuracy"]
        gaps["View 1" if record["split"] == "view1" else "View 2"].append(gap)
        print(f"| {os.path.basename(os.path.normpath(run))} | {f['accuracy']:.2f} | "
              f"{f['best_accuracy']:.2f} | {gap:.2f} | {record['threshold']:.3f} | "
              f"{f['best_threshold']:.3f} |")
    for view, values in gaps.items():
        if values:
            print(f"\n{view}: {len(values)} runs, gap mean {statistics.mean(values):.2f}, "
                  f"median {statistics.median(values):.2f}, range {min(values):.2f}-"
                  f"{max(values):.2f} points")


if __name__ == "__main__":
    main()
