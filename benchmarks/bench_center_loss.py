"""One training step of center loss, side by side: the popular B x C formulation vs ours.

    python benchmarks/bench_center_loss.py            # CPU
    python benchmarks/bench_center_loss.py --device cuda
    python benchmarks/bench_center_loss.py --methods "ours dense,ours compiled"

A step is forward + backward + the centers' 1/lambda rescaling + a plain SGD step on
the centers, with B=256. Each (method, classes) pair runs in a fresh subprocess so its
peak memory is its own: what the steps need beyond the centers and the inputs (the
centers' gradient and all temporaries), on the CPU the peak resident set (VmHWM, reset
after a warm-up step) above the resident set before, on CUDA
torch.cuda.max_memory_allocated above what was allocated before.
The baseline is KaiyangZhou/pytorch-center-loss's forward, re-implemented here (its
deprecated addmm_(1, -2, ...) overload written with keywords). "ours compiled" is the
dense mode under torch.compile(fullgraph=True), the optimizer step eager; its first
call (the compilation) is the warm-up step, timed apart.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from center_loss import CenterLoss  # noqa: E402

BATCH = 256
CONFIGS = [(10, 2), (1_000, 512), (100_000, 512), (1_000_000, 512)]  # (classes, feat_dim)
METHODS = ["popular B x C", "ours dense", "ours compiled", "ours sparse"]


class PopularCenterLoss(nn.Module):
    """The popular implementation's forward: O(B*C*D) time, O(B*C) memory."""

    def __init__(self, num_classes, feat_dim, device):
        super().__init__()
        self.num_classes = num_classes
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim, device=device))

    def forward(self, x, labels):
        batch_size = x.size(0)
        distmat = torch.pow(x, 2).sum(dim=1, keepdim=True).expand(batch_size, self.num_classes) + \
            torch.pow(self.centers, 2).sum(dim=1, keepdim=True).expand(self.num_classes, batch_size).t()
        distmat.addmm_(x, self.centers.t(), beta=1, alpha=-2)
        classes = torch.arange(self.num_classes, device=x.device).long()
        labels = labels.unsqueeze(1).expand(batch_size, self.num_classes)
        mask = labels.eq(classes.expand(batch_size, self.num_classes))
        dist = distmat * mask.float()
        return dist.clamp(min=1e-12, max=1e+12).sum() / batch_size


def baseline_bytes(num_classes):
    # distmat, mask.float(), the product, the clamp and backward's copies: ~6 B x C floats.
    return 6 * BATCH * num_classes * 4


def available_bytes(device):
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free
    with open("/proc/meminfo") as f:
        info = dict(line.split(":") for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def proc_status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure(method, num_classes, feat_dim, device, steps, min_seconds=1.0, weight_cent=1.0,
            lr_cent=0.5):
    """Time and peak memory of one step; runs inside the subprocess."""
    torch.manual_seed(0)
    if method == "popular B x C":
        loss_fn = PopularCenterLoss(num_classes, feat_dim, device)
    else:
        loss_fn = CenterLoss(num_classes, feat_dim, use_gpu=False,
                             sparse=method == "ours sparse").to(device)
    opt = torch.optim.SGD(loss_fn.parameters(), lr=lr_cent)
    if method == "ours compiled":
        loss_fn = torch.compile(loss_fn, fullgraph=True)
    features = torch.randn(BATCH, feat_dim, device=device, requires_grad=True)
    labels = torch.randint(0, num_classes, (BATCH,), device=device)

    def step():
        opt.zero_grad()
        features.grad = None
        loss = weight_cent * loss_fn(features, labels)
        loss.backward()
        for p in loss_fn.parameters():
            p.grad.data *= 1.0 / weight_cent
        opt.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    start = time.perf_counter()
    step()  # warm-up: one-off allocations of the first call are not a step's memory
    sync()
    first = time.perf_counter() - start
    opt.zero_grad()
    features.grad = None
    # From here memory counts: what a step needs beyond the centers and the inputs,
    # the centers' gradient included.
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set (VmHWM) to the current one
        before = proc_status_bytes("VmRSS")
    times = []
    while len(times) < steps or sum(times) < min_seconds:
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = proc_status_bytes("VmHWM") - before
    return statistics.median(times), max(peak, 0), len(times), first


def run_one(method, num_classes, feat_dim, device, steps):
    cmd = [sys.executable, __file__, "--child", json.dumps([method, num_classes, feat_dim]),
           "--device", device, "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps at least, and more until 1 s is timed (median is shown)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {METHODS}")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        method, num_classes, feat_dim = json.loads(args.child)
        print(json.dumps(measure(method, num_classes, feat_dim, args.device, args.steps)))
        return

    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"B={BATCH}, median step time")
    print("| classes | D | method | step (ms) | steps timed | peak memory of a step (MB) | vs popular |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    results, first_calls = {}, []
    methods = [m for m in METHODS if m in args.methods.split(",")]
    for num_classes, feat_dim in CONFIGS:
        base = None
        for method in methods:
            if method == "popular B x C" and baseline_bytes(num_classes) > 0.6 * available_bytes(args.device):
                print(f"| {num_classes:,} | {feat_dim} | {method} | skipped: needs about "
                      f"{baseline_bytes(num_classes) / 2**30:.1f} GiB | | | |")
                continue
            seconds, peak, timed, first = run_one(method, num_classes, feat_dim, args.device,
                                                  args.steps)
            results[(num_classes, method)] = seconds
            if method == "ours compiled":
                first_calls.append(f"{num_classes:,}: {first:.1f} s")
            if method == "popular B x C":
                base = seconds
            speedup = f"{base / seconds:.1f}x" if base else "n/a"
            print(f"| {num_classes:,} | {feat_dim} | {method} | {seconds * 1e3:.2f} | {timed} | "
                  f"{peak / 2**20:.1f} | {speedup} |", flush=True)
    ratios = [f"{c:,}: {results[(c, 'ours dense')] / results[(c, 'ours compiled')]:.2f}x"
              for c, _ in CONFIGS if (c, "ours dense") in results and (c, "ours compiled") in results]
    if ratios:
        print("\nours compiled vs ours dense (eager), speed by classes: " + ", ".join(ratios))
    if first_calls:
        print("ours compiled, first call (compilation included), by classes: "
              + ", ".join(first_calls))
    small, large = results.get((1_000, "ours sparse")), results.get((1_000_000, "ours sparse"))
    if small and large:
        print(f"\nours sparse, 1,000,000 vs 1,000 classes: {large / small:.2f}x the time per step")


if __name__ == "__main__":
    main()
