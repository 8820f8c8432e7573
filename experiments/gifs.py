"""The first screen's GIFs and the reference runs they come from, regenerated with main.py.

    python experiments/gifs.py --data-root ./data                 # the four runs, ~100 epochs
    python experiments/gifs.py --data-root ./data --gpu 0         # main.py flags pass through
    python experiments/gifs.py --data-root ./data --only center softmax

Each run is main.py with the popular implementation's defaults, --plot and an evaluation
every epoch: the flags in the Args line of log/popular/<name>/'s log. It trains in
--runs-dir/<name>/ (resumed from its checkpoint when interrupted, as experiments/study.py
does). Once finished, its log, metrics.csv and run.json are copied to log/popular/<name>/
and its GIFs to gifs/. A run is bit-identical only at the same OMP_NUM_THREADS (docs/details.md).
"""
import argparse
import importlib.util
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("study", os.path.join(ROOT, "experiments", "study.py"))
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

# The popular defaults, spelled out so that a change of main.py's defaults cannot change
# what these runs are.
POPULAR = ["--batch-size", "128", "--lr-model", "0.001", "--lr-cent", "0.5",
           "--center-update", "grad", "--stepsize", "20", "--gamma", "0.5", "--model", "cnn",
           "--feat-dim", "2", "--seed", "1", "--eval-freq", "1", "--print-freq", "50",
           "--plot"]
# name: (dataset, λ, epochs, {GIF main.py writes: its name in gifs/})
RUNS = {
    "center": ("mnist", 1, 30, {"train.gif": "center_train.gif",
                                "test.gif": "center_test.gif"}),
    "softmax": ("mnist", 0, 30, {"train.gif": "softmax_train.gif",
                                 "test.gif": "softmax_test.gif"}),
    "fashion-center": ("fashion-mnist", 1, 20, {"test.gif": "fashion_center_test.gif"}),
    "fashion-softmax": ("fashion-mnist", 0, 20, {"test.gif": "fashion_softmax_test.gif"}),
}


def run_flags(name):
    dataset, lam, epochs, _ = RUNS[name]
    return ["-d", dataset, "--weight-cent", f"{lam:g}", "--max-epoch", str(epochs)] + POPULAR


def land(name, args):
    """Copy a finished run's log, metrics.csv and run.json to --log-dir/<name>/ and its
    GIFs to --gifs-dir."""
    run_dir = os.path.join(args.runs_dir, name)
    out = os.path.join(args.log_dir, name)
    os.makedirs(out, exist_ok=True)
    os.makedirs(args.gifs_dir, exist_ok=True)
    for f in (f"log_{RUNS[name][0]}.txt", "metrics.csv", "run.json"):
        shutil.copy(os.path.join(run_dir, f), os.path.join(out, f))
    for made, kept in RUNS[name][3].items():
        shutil.copy(os.path.join(run_dir, made), os.path.join(args.gifs_dir, kept))
    print(f"{name}: copied to {out} and {args.gifs_dir}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Other flags (e.g. --gpu 0, --use-cpu) go to main.py.")
    p.add_argument("--data-root", default="./data")
    p.add_argument("--runs-dir", default=os.path.join(ROOT, "log", "gif-runs"),
                   help="where the runs train (the default is git-ignored)")
    p.add_argument("--log-dir", default=os.path.join(ROOT, "log", "popular"))
    p.add_argument("--gifs-dir", default=os.path.join(ROOT, "gifs"))
    p.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    args, passthrough = p.parse_known_args(argv)
    for name in args.only:
        study.train(name, run_flags(name), args, passthrough, epochs=RUNS[name][2])
        land(name, args)


if __name__ == "__main__":
    sys.exit(main())
