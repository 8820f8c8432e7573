"""What --plot costs a run, and whether that cost grows with the epochs: main.py at this
checkout against main.py at a baseline revision, in the same run, on the same data.

    python benchmarks/bench_plot.py --data-root ./data                  # baseline HEAD~1
    python benchmarks/bench_plot.py --data-root ./data --baseline 96fe4a9 --epochs 30

Each version trains the popular defaults (plus --eval-freq 1) on the first --train-images
and --test-images of MNIST (written as IDX files to a temporary folder), once with --plot
and once without, one thread each (OMP_NUM_THREADS=1), one run at a time. The baseline is
checked out into a temporary git worktree. Prints the wall time of each run, the ratio
with --plot to without, and the mean of the "Epoch N took" lines over the first and the
last five epochs: a cost that grows with the epochs shows there.
"""
import argparse
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_idx(path):
    with open(path, "rb") as f:
        _, _, ndim = struct.unpack(">HBB", f.read(4))
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def write_idx(path, array):
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(np.ascontiguousarray(array).tobytes())


def subset(data_root, out, n_train, n_test):
    """The first n_train / n_test images of MNIST/raw under data_root, as MNIST/raw in out."""
    raw, new = os.path.join(data_root, "MNIST", "raw"), os.path.join(out, "MNIST", "raw")
    os.makedirs(new, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte"
            write_idx(os.path.join(new, name), read_idx(os.path.join(raw, name))[:n])
    return out


def timed_run(checkout, data, save_dir, epochs, plot):
    """Wall seconds of one main.py run, and its per-epoch times from the console."""
    command = [sys.executable, os.path.join(checkout, "main.py"), "--data-root", data,
               "--save-dir", save_dir, "--use-cpu", "--max-epoch", str(epochs),
               "--eval-freq", "1"] + (["--plot"] if plot else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=checkout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    epochs = [float(s) for s in re.findall(r"^Epoch \d+/\d+ took ([\d.]+) s", done.stdout, re.M)]
    return wall, epochs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="./data")
    p.add_argument("--baseline", default="HEAD~1", help="git revision to compare with")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--train-images", type=int, default=640)
    p.add_argument("--test-images", type=int, default=500)
    args = p.parse_args()
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", args.baseline],
                         capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(args.data_root, os.path.join(tmp, "data"), args.train_images,
                      args.test_images)
        baseline = os.path.join(tmp, "baseline")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", baseline, rev],
                       capture_output=True, check=True)
        try:
            print(f"{args.epochs} epochs of the popular defaults, --eval-freq 1, "
                  f"{args.train_images} training and {args.test_images} test MNIST images, "
                  f"OMP_NUM_THREADS=1\n")
            print("| main.py | without --plot (s) | with --plot (s) | ratio | --plot epoch time, "
                  "first 5 / last 5 (s) |")
            print("|---|---:|---:|---:|---:|")
            for name, checkout in ((f"baseline {rev}", baseline), ("this checkout", ROOT)):
                plain, _ = timed_run(checkout, data, os.path.join(tmp, name, "plain"),
                                     args.epochs, False)
                plotted, epochs = timed_run(checkout, data, os.path.join(tmp, name, "plot"),
                                            args.epochs, True)
                print(f"| {name} | {plain:.1f} | {plotted:.1f} | {plotted / plain:.2f}x | "
                      f"{sum(epochs[:5]) / 5:.2f} / {sum(epochs[-5:]) / 5:.2f} |", flush=True)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", baseline],
                           capture_output=True)


if __name__ == "__main__":
    main()
