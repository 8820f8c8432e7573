"""Evaluating the full MNIST test set, side by side: evaluation.py vs a brute-force version.

    python benchmarks/bench_evaluation.py                  # D=2, then D=128
    python benchmarks/bench_evaluation.py --feat-dim 512 --repeats 5
    python benchmarks/bench_evaluation.py --omniglot --data-root ./data   # Omniglot-sized
    python benchmarks/bench_evaluation.py --lfw --data-root ./data        # LFW View 1

--omniglot times instead what main.py does at each evaluation of an Omniglot checkpoint,
on 128-D synthetic features of its shapes: 3,856 seen test images of 964 classes and
13,180 unseen ones of 659 classes (20 each), each split's retrieval, 10-fold verification
and all-pairs TAR@FAR 1e-3/1e-4/1e-5 (86.8 M pairs of the unseen split), and the 20
one-shot runs of 20-way by cosine and L2; the brute force holds the full N x N matrix and
sorts every impostor score. With --data-root it also times loading Omniglot
(datasets.load_omniglot: 32,460 PNGs decoded and resized, the one-shot zip read), first
into an empty cache folder, then from the cache file that load wrote; --drop-caches
(Linux, as root) empties the OS page cache before each, so both are timed cold.

N=10,000 float32 features (as main.py hands them over) with the MNIST test set's class
sizes, 10 classes, 6,000 verification pairs (10 folds), cosine similarity. "Full
evaluation" is retrieval_metrics + verification_pairs + verification_metrics. The
features are synthetic and seeded, clustered like trained center-loss features: class
means on a circle of radius 10 (for D > 2 a circle in a random plane of R^D) plus
Gaussian noise, 1.5 per coordinate at D=2 and 0.7 above, so that neither set is
trivial (MAP@R about 0.81 at D=2 and 0.82 at D=128).

The brute-force version, written here, is the textbook one: the full N x N float64
similarity matrix at once, its diagonal set to -inf, a full argsort of every row, and
precision@1 / R-precision / MAP@R from the sorted labels; for verification, each fold
tries every candidate threshold of its training folds (the midpoints between their
distinct scores, and below / above them all) by comparing it with every pair, AUC
from the n_same x n_diff matrix of pairwise comparisons, TAR@FAR and the ROC by
scanning every distinct score as a threshold. Threshold scans are chunked (T x P
comparisons at a time) so that the brute force still finishes in seconds.

Every repeat asserts that both give the same numbers (to 1e-9; the ROC point by point)
before any time is printed, so the table also checks evaluation.py. Times are medians
over --repeats (time.perf_counter). Memory: the largest matrix each holds (theory,
from the shapes) and the measured peak resident set above the one before the call
(VmHWM after resetting it through /proc/self/clear_refs; Linux only, else n/a).
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import evaluation  # noqa: E402
from evaluation import (all_pairs_tar_at_far, one_shot_error, retrieval_metrics,  # noqa: E402
                        verification_metrics, verification_pairs)

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # N = 10,000
NUM_PAIRS = 6000
FOLDS = 10
FAR = 1e-3
TOL = 1e-9
TARGET_SECONDS = 5.0
THRESHOLD_CHUNK = 1024  # thresholds compared with all pairs at once in the brute force
RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "map_at_r")
VERIFICATION_KEYS = ("accuracy", "accuracy_std", "auc", "tar_at_far")


# ----------------------------------------------------------------------------- data

def synthetic_features(feat_dim, seed=0, radius=10.0, noise=None):
    """float32 (N, D) features and (N,) labels, shuffled: class c's mean at angle
    2 pi c / 10 on a circle of the given radius, plus Gaussian noise of standard deviation
    ``noise`` per coordinate (default 1.5 at D <= 2, as a trained 2-D center-loss test
    set, and 0.7 above, where more coordinates of noise blur the cosines more)."""
    if noise is None:
        noise = 1.5 if feat_dim <= 2 else 0.7
    g = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(MNIST_TEST_COUNTS)),
                                     torch.tensor(MNIST_TEST_COUNTS))
    labels = labels[torch.randperm(len(labels), generator=g)]
    angles = 2 * math.pi * torch.arange(len(MNIST_TEST_COUNTS), dtype=torch.float64) / len(MNIST_TEST_COUNTS)
    circle = radius * torch.stack([angles.cos(), angles.sin()], 1)  # (C, 2)
    if feat_dim == 2:
        plane = torch.eye(2, dtype=torch.float64)
    else:  # two orthonormal directions of R^D
        plane = torch.linalg.qr(torch.randn(feat_dim, 2, generator=g, dtype=torch.float64))[0].T
    means = circle @ plane  # (C, D)
    x = means[labels] + noise * torch.randn(len(labels), feat_dim, generator=g, dtype=torch.float64)
    return x.float(), labels


# ----------------------------------------------------------------------- brute force

def brute_retrieval(features, labels):
    """Full N x N float64 cosine similarities, diagonal -inf, full argsort of each row."""
    x = features.double()
    x = x / x.norm(dim=1, keepdim=True)
    sim = x @ x.T  # N x N float64
    sim.fill_diagonal_(-math.inf)  # never itself
    order = torch.argsort(sim, dim=1, descending=True)  # N x N int64
    del sim
    rel = labels[order] == labels.unsqueeze(1)  # sorted labels, relevant or not
    del order
    r = torch.stack([(labels == c).sum() - 1 for c in labels.unique()])  # per class
    r = r[torch.searchsorted(labels.unique(), labels)]  # R_q per query
    keep = r > 0
    rel, r = rel[keep], r[keep].double()
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    rel = (rel & (ranks.unsqueeze(0) <= r.unsqueeze(1))).double()  # positions 1..R_q only
    hits = rel.cumsum(1)
    n = len(r)
    if n == 0:
        return {"precision_at_1": math.nan, "r_precision": math.nan, "map_at_r": math.nan,
                "num_queries": 0}
    return {"precision_at_1": rel[:, 0].sum().item() / n,
            "r_precision": (hits[:, -1] / r).sum().item() / n,
            "map_at_r": ((hits / ranks * rel).sum(1) / r).sum().item() / n,
            "num_queries": n}


def _pair_scores(features, labels, pairs):
    x = features.double()
    x = x / x.norm(dim=1, keepdim=True)
    scores = (x[pairs[:, 0]] * x[pairs[:, 1]]).sum(1)
    return scores, labels[pairs[:, 0]] == labels[pairs[:, 1]]


def _count_above(scores, thresholds, strict=True):
    """How many scores lie above each threshold: a (T x P) comparison per chunk."""
    out = []
    for start in range(0, len(thresholds), THRESHOLD_CHUNK):
        t = thresholds[start:start + THRESHOLD_CHUNK].unsqueeze(1)
        out.append(((scores.unsqueeze(0) > t) if strict else (scores.unsqueeze(0) >= t)).sum(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def brute_verification(features, labels, pairs, folds=FOLDS, far=FAR):
    scores, same = _pair_scores(features, labels, pairs)
    fold_of = torch.arange(len(scores)) // (len(scores) // folds)
    accs = []
    for k in range(folds):
        test = fold_of == k
        s, y = scores[~test], same[~test]
        v = torch.unique(s)
        candidates = torch.cat([v[:1] - 1, (v[1:] + v[:-1]) / 2, v[-1:] + 1])  # ascending
        best_t, best_correct = None, -1
        for start in range(0, len(candidates), THRESHOLD_CHUNK):
            t = candidates[start:start + THRESHOLD_CHUNK]
            calls = s.unsqueeze(0) > t.unsqueeze(1)  # T x P: "same" at each threshold
            correct = (calls == y.unsqueeze(0)).sum(1)
            i = int(torch.argmax(correct))  # the lowest threshold wins ties
            if int(correct[i]) > best_correct:
                best_t, best_correct = t[i], int(correct[i])
        accs.append(((scores[test] > best_t) == same[test]).double().mean())
    accs = torch.stack(accs)
    s_same, s_diff = scores[same], scores[~same]
    n_same, n_diff = len(s_same), len(s_diff)
    # AUC: every same pair against every different pair, ties one half.
    greater = (s_same.unsqueeze(1) > s_diff.unsqueeze(0)).sum().item()
    ties = (s_same.unsqueeze(1) == s_diff.unsqueeze(0)).sum().item()
    auc = (greater + 0.5 * ties) / (n_same * n_diff)
    # TAR@FAR: every distinct score (and -inf, accept all) as the threshold of "score > t".
    t = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), torch.unique(scores)])
    fa, ta = _count_above(s_diff, t), _count_above(s_same, t)
    ok = fa <= far * n_diff + 1e-9
    tar = ta[ok].max().item() / n_same
    # ROC: "score >= v" at every distinct score v, highest first, from (0, 0).
    v = torch.unique(scores).flip(0)
    zero = torch.zeros(1, dtype=torch.float64)
    fpr = torch.cat([zero, _count_above(s_diff, v, strict=False).double() / n_diff])
    tpr = torch.cat([zero, _count_above(s_same, v, strict=False).double() / n_same])
    return {"accuracy": accs.mean().item(), "accuracy_std": accs.std(unbiased=False).item(),
            "auc": auc, "tar_at_far": tar, "far": float(far), "fpr": fpr, "tpr": tpr}


# ------------------------------------------------------------------- measurement

def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def measured(fn, *args):
    """(result, seconds, peak resident bytes above the start or None)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set (VmHWM) to the current one
        before = _status_bytes("VmRSS")
    except OSError:
        before = None
    start = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - start
    peak = None if before is None else max(_status_bytes("VmHWM") - before, 0)
    return out, seconds, peak


def check_agreement(feat_dim, what, ours, brute):
    """Raise with the exact case when a number differs by more than TOL."""
    bad = []
    keys = RETRIEVAL_KEYS + ("num_queries",) if what == "retrieval" else VERIFICATION_KEYS
    for k in keys:
        a, b = ours[k], brute[k]
        if not (abs(a - b) <= TOL or (math.isnan(a) and math.isnan(b))):
            bad.append(f"{k}: ours {a!r}, brute force {b!r}, |diff| {abs(a - b):.3g}")
    if what == "verification":
        for k in ("fpr", "tpr"):
            a, b = ours[k], brute[k]
            if a.shape != b.shape:
                bad.append(f"{k}: ours {tuple(a.shape)} points, brute force {tuple(b.shape)}")
            elif len(a) and (a - b).abs().max().item() > TOL:
                i = int((a - b).abs().argmax())
                bad.append(f"{k}[{i}]: ours {a[i].item()!r}, brute force {b[i].item()!r}")
    if bad:
        raise AssertionError(f"D={feat_dim} {what}: ours and brute force disagree:\n  "
                             + "\n  ".join(bad))


def mb(nbytes):
    return "n/a" if nbytes is None else f"{nbytes / 1e6:,.0f}"


def run_dim(feat_dim, repeats):
    features, labels = synthetic_features(feat_dim)
    n = len(labels)
    times = {k: [] for k in ("ours retrieval", "brute retrieval", "pairs",
                             "ours verification", "brute verification")}
    peaks = {k: [] for k in times}
    for _ in range(repeats):
        steps = [("ours retrieval", retrieval_metrics, (features, labels)),
                 ("brute retrieval", brute_retrieval, (features, labels)),
                 ("pairs", verification_pairs, (labels, NUM_PAIRS, 0, FOLDS))]
        results = {}
        for name, fn, args in steps:
            results[name], t, p = measured(fn, *args)
            times[name].append(t)
            peaks[name].append(p)
        pairs = results["pairs"]
        for name, fn in (("ours verification", verification_metrics),
                         ("brute verification", brute_verification)):
            results[name], t, p = measured(fn, features, labels, pairs)
            times[name].append(t)
            peaks[name].append(p)
        check_agreement(feat_dim, "retrieval", results["ours retrieval"], results["brute retrieval"])
        check_agreement(feat_dim, "verification", results["ours verification"],
                        results["brute verification"])
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: (None if None in v else max(v)) for k, v in peaks.items()}
    full = {"ours": statistics.median([a + b + c for a, b, c in zip(
                times["ours retrieval"], times["pairs"], times["ours verification"])]),
            "brute": statistics.median([a + b + c for a, b, c in zip(
                times["brute retrieval"], times["pairs"], times["brute verification"])])}
    # Largest matrix each holds, from the shapes (float64 / int64: 8 bytes an element).
    block = max(1, getattr(evaluation, "_BLOCK_ELEMENTS", 2 ** 23) // n)
    n_same = n_diff = NUM_PAIRS // 2
    train = NUM_PAIRS - NUM_PAIRS // FOLDS
    big = {"ours retrieval": f"{block} x {n:,} float64: {block * n * 8 / 1e6:,.0f} MB",
           "brute retrieval": f"{n:,} x {n:,} float64 (+ int64 argsort): {n * n * 8 / 1e6:,.0f} MB",
           "pairs": f"{NUM_PAIRS:,} x 2 int64: {NUM_PAIRS * 16 / 1e6:.2f} MB",
           "ours verification": f"{NUM_PAIRS:,} float64: {NUM_PAIRS * 8 / 1e6:.2f} MB",
           "brute verification": f"{n_same:,} x {n_diff:,} AUC ({n_same * n_diff * 8 / 1e6:,.0f} MB "
                                 f"as float64); {THRESHOLD_CHUNK} x {train:,} threshold chunks"}
    r, v = results["ours retrieval"], results["ours verification"]
    rows = [("retrieval (P@1, R-prec, MAP@R)", med["ours retrieval"], med["brute retrieval"],
             big["ours retrieval"], big["brute retrieval"], peak["ours retrieval"],
             peak["brute retrieval"]),
            ("verification pairs (same call)", med["pairs"], med["pairs"], big["pairs"],
             big["pairs"], peak["pairs"], peak["pairs"]),
            ("verification (acc, AUC, TAR@FAR, ROC)", med["ours verification"],
             med["brute verification"], big["ours verification"], big["brute verification"],
             peak["ours verification"], peak["brute verification"]),
            ("**full evaluation**", full["ours"], full["brute"], "", "",
             _max(peak["ours retrieval"], peak["pairs"], peak["ours verification"]),
             _max(peak["brute retrieval"], peak["pairs"], peak["brute verification"]))]
    for what, ours, brute, big_o, big_b, peak_o, peak_b in rows:
        speedup = "(shared)" if what.startswith("verification pairs") else f"{brute / ours:.1f}x"
        print(f"| {feat_dim} | {what} | {ours:.3f} | {brute:.3f} | {speedup} | "
              f"{big_o} | {big_b} | {mb(peak_o)} | {mb(peak_b)} |", flush=True)
    return full["ours"], r, v


def _max(*values):
    return None if None in values else max(values)


# ------------------------------------------------------------------------ Omniglot

OMNIGLOT_SPLITS = (("seen", 964, 4), ("unseen", 659, 20))  # (split, classes, images each)
ALL_PAIRS_FARS = (1e-3, 1e-4, 1e-5)
OMNIGLOT_TARGET_SECONDS = 10.0


def omniglot_features(feat_dim=128, seed=0, spread=0.45):
    """{split: (features, labels)} and one-shot (support, queries, answers): classes with
    random means (spread per coordinate) plus unit Gaussian noise, float32 as main.py."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split, classes, each in OMNIGLOT_SPLITS:
        labels = torch.arange(classes).repeat_interleave(each)
        means = spread * torch.randn(classes, feat_dim, generator=g)
        out[split] = (means[labels] + torch.randn(len(labels), feat_dim, generator=g), labels)
    means = spread * torch.randn(20, 20, feat_dim, generator=g)  # 20 runs of 20 characters
    answers = torch.stack([torch.randperm(20, generator=g) for _ in range(20)])
    support = means + torch.randn(means.shape, generator=g)
    queries = means.gather(1, answers.unsqueeze(2).expand(-1, -1, feat_dim))
    queries = queries + torch.randn(queries.shape, generator=g)
    return out, (support, queries, answers)


def brute_all_pairs(features, labels, fars=ALL_PAIRS_FARS):
    """The full N x N float64 cosine matrix, its upper triangle split into same- and
    different-class scores, every different-class score sorted."""
    x = features.double()
    x = x / x.norm(dim=1, keepdim=True)
    sim = x @ x.T
    upper = torch.ones(len(x), len(x), dtype=torch.bool).triu_(1)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    genuine, impostors = sim[upper & same], sim[upper & ~same]
    del sim, upper, same
    impostors = impostors.sort(descending=True).values
    tar = {}
    for far in fars:
        k = math.floor(far * len(impostors) + 1e-9)
        tar[far] = 1.0 if k >= len(impostors) else (genuine > impostors[k]).double().mean().item()
    return {"tar": tar, "num_same": len(genuine), "num_different": len(impostors)}


def brute_one_shot(support, queries, answers, metric):
    """Every query against every support image in Python loops, float64."""
    errors = []
    for r in range(len(support)):
        wrong = 0
        for q in range(queries.shape[1]):
            a = queries[r, q].double()
            scores = []
            for w in range(support.shape[1]):
                b = support[r, w].double()
                scores.append((a @ b / (a.norm() * b.norm())).item() if metric == "cosine"
                              else -(a - b).norm().item())
            wrong += max(range(len(scores)), key=lambda w: (scores[w], -w)) != int(answers[r, q])
        errors.append(wrong / queries.shape[1])
    mean = sum(errors) / len(errors)
    return {"error": mean, "error_std": math.sqrt(sum((e - mean) ** 2 for e in errors) / len(errors))}


def _agree(what, ours, brute, keys):
    bad = [f"{k}: ours {ours[k]!r}, brute force {brute[k]!r}" for k in keys
           if not abs(ours[k] - brute[k]) <= TOL]
    if bad:
        raise AssertionError(f"Omniglot {what}: ours and brute force disagree:\n  " + "\n  ".join(bad))


def omniglot_steps(splits, one_shot):
    """[(row name, ours, brute force, compare)]: each a () -> result, compare(ours, brute)."""
    steps = []
    for split, (x, y) in splits.items():
        pairs = verification_pairs(y, NUM_PAIRS, 0, FOLDS)
        steps += [
            (f"{split}: retrieval", lambda x=x, y=y: retrieval_metrics(x, y),
             lambda x=x, y=y: brute_retrieval(x, y),
             lambda o, b: _agree("retrieval", o, b, RETRIEVAL_KEYS + ("num_queries",))),
            (f"{split}: pairs + 10-fold verification",
             lambda x=x, y=y: verification_metrics(x, y, verification_pairs(y, NUM_PAIRS, 0, FOLDS)),
             lambda x=x, y=y, p=pairs: brute_verification(x, y, p),
             lambda o, b: _agree("verification", o, b, VERIFICATION_KEYS)),
            (f"{split}: all-pairs TAR@FAR", lambda x=x, y=y: all_pairs_tar_at_far(x, y, ALL_PAIRS_FARS),
             lambda x=x, y=y: brute_all_pairs(x, y),
             lambda o, b: _agree("all-pairs", {**o["tar"], "n": o["num_different"]},
                                 {**b["tar"], "n": b["num_different"]}, ALL_PAIRS_FARS + ("n",)))]
    for metric in ("cosine", "euclidean"):
        steps.append((f"one-shot, 20 runs ({metric})",
                      lambda m=metric: one_shot_error(*one_shot, metric=m),
                      lambda m=metric: brute_one_shot(*one_shot, m),
                      lambda o, b: _agree("one-shot", o, b, ("error", "error_std"))))
    return steps


def steps_table(steps, repeats):
    """Time each (name, ours, brute force, compare) step `repeats` times, both checked
    to agree on every repeat, and print the markdown table of the medians with a row for
    the whole evaluation. Returns ({name: our last result}, our median total seconds)."""
    print("| what | ours (s) | brute force (s) | speedup |")
    print("|---|---:|---:|---:|")
    total = {"ours": [0.0] * repeats, "brute": [0.0] * repeats}
    results = {}
    for name, ours, brute, compare in steps:
        t_o, t_b = [], []
        for i in range(repeats):
            o, t, _ = measured(ours)
            b, tb, _ = measured(brute)
            compare(o, b)
            t_o.append(t)
            t_b.append(tb)
            total["ours"][i] += t
            total["brute"][i] += tb
        results[name] = o
        a, b = statistics.median(t_o), statistics.median(t_b)
        print(f"| {name} | {a:.3f} | {b:.3f} | {b / a:.1f}x |", flush=True)
    full_o, full_b = statistics.median(total["ours"]), statistics.median(total["brute"])
    print(f"| **full evaluation** | {full_o:.3f} | {full_b:.3f} | {full_b / full_o:.1f}x |")
    return results, full_o


def run_omniglot(repeats, data_root, drop_caches=False):
    splits, one_shot = omniglot_features()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"128-D synthetic features: seen {len(splits['seen'][1]):,} (964 classes), unseen "
          f"{len(splits['unseen'][1]):,} (659 classes); {NUM_PAIRS:,} pairs in {FOLDS} folds, "
          f"all-pairs FARs {', '.join(f'{f:g}' for f in ALL_PAIRS_FARS)}; cosine; median of "
          f"{repeats}; ours and brute force agree to {TOL:g} on every repeat\n")
    results, full_o = steps_table(omniglot_steps(splits, one_shot), repeats)
    tar = results["unseen: all-pairs TAR@FAR"]
    print(f"\nfull evaluation {full_o:.2f} s, target < {OMNIGLOT_TARGET_SECONDS:g} s on 2 CPU "
          f"cores: {'met' if full_o < OMNIGLOT_TARGET_SECONDS else 'NOT met'}; unseen: "
          f"{tar['num_same']:,} same-class and {tar['num_different']:,} different-class pairs, "
          + ", ".join(f"TAR@FAR={f:g} {v:.4f}" for f, v in tar["tar"].items())
          + f"; one-shot error (cosine) {results['one-shot, 20 runs (cosine)']['error']:.4f}")
    if data_root:
        time_loading(data_root, drop_caches)


def drop_page_cache():
    """Empty Linux's page cache (root only), so that the next read comes from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def time_loading(data_root, drop_caches):
    """datasets.load_omniglot three times in this process, each cold in the OS page cache
    too with drop_caches: without a cache, every PNG decoded in this one process (the
    baseline); into an empty cache folder, decoded in datasets' forked processes; and from
    the cache file that load wrote. All three must give the same images."""
    import tempfile
    before, pool_min = os.environ.get("CENTER_LOSS_CACHE"), datasets.DECODE_POOL_MIN_FILES
    with tempfile.TemporaryDirectory() as cache:
        reference = None
        for what, folder, min_files in (
                ("decoded in one process, no cache", "", float("inf")),
                ("decoded in processes, empty cache", cache, pool_min),
                ("from the cache", cache, pool_min)):
            os.environ["CENTER_LOSS_CACHE"] = folder
            datasets.DECODE_POOL_MIN_FILES = min_files
            if drop_caches:
                drop_page_cache()
            start = time.perf_counter()
            o = datasets.load_omniglot(data_root)
            seconds = time.perf_counter() - start
            images = torch.cat([o["train"][0], o["test"][0]])
            reference = images if reference is None else reference
            assert torch.equal(images, reference), f"{what}: not the one-process images"
            n = len(o["train"][1]) + len(o["test"][1])
            print(f"loading Omniglot from {data_root} ({what}; OS page cache "
                  f"{'dropped' if drop_caches else 'as it was'}): {n:,} images and the one-shot "
                  f"zip in {seconds:.2f} s, target < 10 s: {'met' if seconds < 10 else 'NOT met'}")
    datasets.DECODE_POOL_MIN_FILES = pool_min
    # The temporary folder is gone: later loads in this process use the cache they had.
    if before is None:
        del os.environ["CENTER_LOSS_CACHE"]
    else:
        os.environ["CENTER_LOSS_CACHE"] = before


def lfw_features(data_root, split="view1", feat_dim=512, seed=0, spread=0.45):
    """The test set of LFW `split` as main.py evaluates it, with synthetic features: its real
    labels (the threshold pairs' images of trained people, then every image of the test
    people) and pairs; features are random person means plus unit noise, float32."""
    o = datasets.load_lfw(data_root, split)
    labels, lfw = o["test"][1], o["extra"]["lfw"]
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(int(labels.max()) + 1, feat_dim, generator=g)
    features = means[labels] + torch.randn(len(labels), feat_dim, generator=g)
    return features, labels, lfw


def brute_protocol(features, lfw):
    """LFW's protocol by brute force: every candidate threshold of the threshold pairs (the
    midpoints of their distinct scores, and below / above them all) tried on every one of
    those pairs; AUC from every matched x mismatched comparison of the test pairs."""
    x = features.double()
    x = x / x.norm(dim=1, keepdim=True)
    score = lambda p: (x[p[:, 0]] * x[p[:, 1]]).sum(1)  # noqa: E731
    chosen_on, same_t = score(lfw["threshold_pairs"]), lfw["threshold_same"]
    values = chosen_on.unique()
    cuts = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])
    right = ((chosen_on.unsqueeze(0) > cuts.unsqueeze(1)) == same_t.unsqueeze(0)).sum(1)
    t = cuts[torch.argmax(right)]  # the first (lowest) of the best
    scores, same = score(lfw["pairs"]), lfw["same"]
    diff = scores[same].unsqueeze(1) - scores[~same].unsqueeze(0)
    auc = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    return {"accuracy": ((scores > t) == same).double().mean().item(), "threshold": t.item(),
            "auc": auc}


def run_lfw(repeats, data_root, drop_caches=False):
    """What main.py computes at each evaluation of an LFW View 1 run, on synthetic 512-D
    features of its real shapes, ours against brute force; then loading LFW."""
    features, labels, lfw = lfw_features(data_root)
    test = torch.arange(len(labels)) >= lfw["num_threshold_images"]
    x, y = features[test], labels[test]
    steps = [
        ("protocol pairs (threshold on trained people's pairs)",
         lambda: evaluation.protocol_verification(features, lfw["pairs"], lfw["same"],
                                                  lfw["threshold_pairs"], lfw["threshold_same"]),
         lambda: brute_protocol(features, lfw),
         lambda o, b: _agree("protocol", o, b, ("accuracy", "threshold", "auc"))),
        ("test people: retrieval", lambda: retrieval_metrics(x, y), lambda: brute_retrieval(x, y),
         lambda o, b: _agree("retrieval", o, b, RETRIEVAL_KEYS + ("num_queries",))),
        ("test people: all-pairs TAR@FAR", lambda: all_pairs_tar_at_far(x, y, ALL_PAIRS_FARS),
         lambda: brute_all_pairs(x, y),
         lambda o, b: _agree("all-pairs", {**o["tar"], "n": o["num_different"]},
                             {**b["tar"], "n": b["num_different"]}, ALL_PAIRS_FARS + ("n",)))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"LFW View 1's test set with 512-D synthetic features: {len(lfw['pairs']):,} test "
          f"pairs, threshold from {len(lfw['threshold_pairs']):,} pairs; {int(test.sum()):,} "
          f"images of {len(y.unique()):,} test people; cosine; median of {repeats}; ours and "
          f"brute force agree to {TOL:g} on every repeat\n")
    full_o = steps_table(steps, repeats)[1]
    print(f"\nfull evaluation {full_o:.2f} s, target < {TARGET_SECONDS:g} s: "
          f"{'met' if full_o < TARGET_SECONDS else 'NOT met'}")
    time_lfw_loading(data_root, drop_caches)


def time_lfw_loading(data_root, drop_caches):
    """datasets.load_lfw (View 1: all 13,233 JPEGs) as time_loading does Omniglot's: in one
    process without a cache (the plain loop), in forked processes into an empty cache,
    and from the cache; all three must give the same images."""
    import tempfile
    before, pool_min = os.environ.get("CENTER_LOSS_CACHE"), datasets.DECODE_POOL_MIN_FILES
    with tempfile.TemporaryDirectory() as cache:
        reference = None
        for what, folder, min_files, target in (
                ("decoded in one process, no cache", "", float("inf"), 15),
                ("decoded in processes, empty cache", cache, pool_min, 15),
                ("from the cache", cache, pool_min, 2)):
            os.environ["CENTER_LOSS_CACHE"] = folder
            datasets.DECODE_POOL_MIN_FILES = min_files
            if drop_caches:
                drop_page_cache()
            start = time.perf_counter()
            o = datasets.load_lfw(data_root, "view1")
            seconds = time.perf_counter() - start
            images = torch.cat([o["train"][0], o["test"][0]])
            reference = images if reference is None else reference
            assert torch.equal(images, reference), f"{what}: not the one-process images"
            print(f"loading LFW View 1 from {data_root} ({what}; OS page cache "
                  f"{'dropped' if drop_caches else 'as it was'}): {len(o['train'][0]):,} "
                  f"training and {len(o['test'][0]):,} test crops in {seconds:.2f} s, target "
                  f"< {target} s: "
                  f"{'met' if seconds < target else 'NOT met'}", flush=True)
    datasets.DECODE_POOL_MIN_FILES = pool_min
    if before is None:
        del os.environ["CENTER_LOSS_CACHE"]
    else:
        os.environ["CENTER_LOSS_CACHE"] = before


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feat-dim", type=int, default=2, help="feature dimension of the first row set")
    p.add_argument("--second-feat-dim", type=int, default=128,
                   help="feature dimension of the second row set (0: none)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (median is shown)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--omniglot", action="store_true",
                   help="time an Omniglot evaluation instead (see the docstring)")
    p.add_argument("--data-root", default=None,
                   help="with --omniglot: also time loading Omniglot from this folder")
    p.add_argument("--drop-caches", action="store_true",
                   help="with --data-root: empty the OS page cache before each load (Linux, "
                        "root), so that loading is timed cold")
    p.add_argument("--lfw", action="store_true",
                   help="time an LFW View 1 evaluation and loading LFW instead (needs --data-root)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lfw:
        if not args.data_root:
            p.error("--lfw needs --data-root, the folder that holds lfw-py/")
        start = time.perf_counter()
        run_lfw(args.repeats, args.data_root, args.drop_caches)
        print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s")
        return
    if args.omniglot:
        start = time.perf_counter()
        run_omniglot(args.repeats, args.data_root, args.drop_caches)
        print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s")
        return
    dims = [args.feat_dim] + ([args.second_feat_dim]
                              if args.second_feat_dim and args.second_feat_dim != args.feat_dim else [])
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"N={sum(MNIST_TEST_COUNTS):,}, {len(MNIST_TEST_COUNTS)} classes, {NUM_PAIRS:,} pairs "
          f"in {FOLDS} folds, cosine, FAR {FAR:g}; median of {args.repeats}; ours and brute force "
          f"agree to {TOL:g} on every repeat")
    # Warm-up on a small set: first-call overheads are no part of either.
    wf, wl = synthetic_features(2)
    wf, wl = wf[:200], wl[:200]
    wp = verification_pairs(wl, 600, 0, FOLDS)
    retrieval_metrics(wf, wl), brute_retrieval(wf, wl)
    verification_metrics(wf, wl, wp), brute_verification(wf, wl, wp)
    print()
    print("| D | what | ours (s) | brute force (s) | speedup | largest matrix, ours | "
          "largest matrix, brute force | peak RSS ours (MB) | peak RSS brute force (MB) |")
    print("|---:|---|---:|---:|---:|---|---|---:|---:|")
    summary = []
    for d in dims:
        summary.append((d,) + run_dim(d, args.repeats))
    print()
    for d, full, r, v in summary:
        met = "met" if full < TARGET_SECONDS else "NOT met"
        print(f"D={d}: full evaluation {full:.2f} s, target < {TARGET_SECONDS:g} s on 2 CPU cores: "
              f"{met} ({torch.get_num_threads()} threads); P@1 {r['precision_at_1']:.4f}, "
              f"R-prec {r['r_precision']:.4f}, MAP@R {r['map_at_r']:.4f}, "
              f"acc {v['accuracy']:.4f} +- {v['accuracy_std']:.4f}, AUC {v['auc']:.4f}, "
              f"TAR@FAR={FAR:g} {v['tar_at_far']:.4f}")
    print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
