"""How discriminative are the features? Retrieval and verification metrics, exact, torch only.

Center loss is meant to give features that recognise classes the network never trained
on (Wen et al. 2016 evaluate on LFW and YTF, people disjoint from training). This file
measures features the way that field does, for any (N, D) features and (N,) labels:

* **Retrieval** (``retrieval_metrics``): every sample queries all the others, as in
  Musgrave et al., *A Metric Learning Reality Check* (ECCV 2020, Sec. 3.2) and
  pytorch-metric-learning's ``AccuracyCalculator``: precision@1, R-precision, MAP@R.
* **Verification** (``verification_pairs``, ``verification_metrics``): same-class /
  different-class pairs laid out as LFW's ``pairs.txt`` (10 folds), scored by cosine
  similarity as in the paper; 10-fold accuracy, ROC AUC and TAR at a fixed FAR.
* **All-pairs verification** (``all_pairs_tar_at_far``): TAR at low FARs over *every*
  pair of a test set, the 1:1 protocol of IJB-style face benchmarks; 3,000 sampled
  impostor pairs cannot resolve a FAR of 1e-4, 86.8 M pairs can.
* **Protocol verification** (``protocol_verification``): given pairs, as LFW's own
  ``pairs.txt``, with the threshold chosen on *other* pairs (of the people trained on),
  never on the pairs tested; ``standard_error`` for the mean over LFW's 10 folds.
* **One-shot classification** (``one_shot_error``): Lake et al.'s Omniglot task
  (Science 2015), each query given the class of its nearest support image.
* **Protocol reports** (``measure``, ``measure_lfw``, ``measure_one_shot``, ``report_seen``):
  what main.py prints after each evaluation and writes to metrics.csv, by each dataset's
  protocol (``NUM_PAIRS`` sampled pairs; LFW's own pairs, its test feature ``MIRROR``);
  ``pair_scores_record`` / ``pair_scores_figures``: an LFW run's test pairs kept as scores
  and the figures recomputed from them.

    >>> import torch
    >>> from evaluation import retrieval_metrics, verification_pairs, verification_metrics
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.arange(200) % 4
    >>> features = torch.randn(200, 8, generator=g) + 3 * torch.eye(8)[labels]
    >>> r = retrieval_metrics(features, labels)
    >>> [round(r[k], 3) for k in ("precision_at_1", "r_precision", "map_at_r")]
    [0.91, 0.752, 0.678]
    >>> pairs = verification_pairs(labels, num_pairs=600, seed=0)
    >>> pairs.shape
    torch.Size([600, 2])
    >>> v = verification_metrics(features, labels, pairs)
    >>> [round(v[k], 3) for k in ("accuracy", "auc", "tar_at_far")]
    [0.857, 0.906, 0.11]

Everything is exact (no approximate search) and runs on the features' device, CPU or
CUDA. Similarities are computed in float64 so that rankings do not depend on float32
rounding. Retrieval holds one block of queries against all N samples at a time:
O(block x N) memory, never the N x N matrix.
"""
import math

import torch
import torch.nn.functional as F

__all__ = ["retrieval_metrics", "verification_pairs", "verification_metrics",
           "protocol_verification", "standard_error", "all_pairs_tar_at_far", "one_shot_error",
           "feature_stats", "combine_mirror", "measure", "measure_lfw", "measure_one_shot",
           "pair_scores_record", "pair_scores_figures"]

METRICS = ("cosine", "euclidean")
# Elements of one block of the query-by-sample similarity matrix (float64: 64 MiB).
_BLOCK_ELEMENTS = 2 ** 23


def _describe(x):
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check(features, labels):
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be a 2-D tensor (N, D), got "
                         f"{getattr(features, 'shape', type(features).__name__)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be a 1-D integer tensor (N,), got {_describe(labels)}")
    if len(labels) != len(features):
        raise ValueError(f"features and labels must have the same N, got {len(features)} "
                         f"and {len(labels)}")


def _prepare(features, metric):
    """float64 features, unit length for cosine (then a dot product is the cosine)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    features = features.double()
    return F.normalize(features, dim=1) if metric == "cosine" else features


def _block_size(block_size, n):
    """Rows per block: the given positive int, or by default as many as keep a block of
    rows x n scores under _BLOCK_ELEMENTS."""
    if block_size is None:
        return max(1, _BLOCK_ELEMENTS // max(n, 1))
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return block_size


def _similarity(a, b, metric):
    """Higher is more alike: cosine similarity, or minus the squared L2 distance (which
    ranks exactly as minus the distance)."""
    if metric == "cosine":
        return a @ b.T
    return -torch.cdist(a, b).square()


def retrieval_metrics(features, labels, metric="cosine", block_size=None):
    r"""Leave-one-out retrieval: each sample queries all the others.

    For a query :math:`q` let :math:`R_q` be the number of *other* samples of its class
    and rank the other samples by similarity (``'cosine'``) or L2 distance
    (``'euclidean'``). With :math:`\mathrm{rel}(i)` = 1 when the :math:`i`-th result
    shares the query's class and :math:`P(i)` the precision of the first :math:`i`:

    * ``precision_at_1``: fraction of queries whose nearest other sample is of their class;
    * ``r_precision``: mean of :math:`P(R_q)`, the precision of the first :math:`R_q`;
    * ``map_at_r``: mean of :math:`\frac{1}{R_q}\sum_{i=1}^{R_q} P(i)\,\mathrm{rel}(i)`,
      which, unlike R-precision, also rewards putting the correct ones first.

    These are Musgrave et al. (ECCV 2020) Sec. 3.2, as pytorch-metric-learning's
    ``AccuracyCalculator`` computes them with the query set equal to the reference set.
    A query whose class has no other sample (:math:`R_q = 0`) is left out; with no query
    left the three values are NaN. Ties in similarity are broken in an unspecified order.

    Args:
        features: (N, D) floating point tensor, on any device.
        labels: (N,) integer tensor.
        metric: ``'cosine'`` (default, as the paper) or ``'euclidean'``.
        block_size: queries per block; default keeps a block under 2**23 similarities.

    Returns:
        dict with ``precision_at_1``, ``r_precision``, ``map_at_r`` (floats in [0, 1])
        and ``num_queries`` (int, the queries not left out).
    """
    _check(features, labels)
    x = _prepare(features, metric)
    labels = labels.to(x.device)
    n = len(labels)
    block_size = _block_size(block_size, n)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    r_all = counts[inverse] - 1  # other samples of each sample's class
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        r = r_all[start:stop]
        keep = r > 0
        if not keep.any():
            continue
        rows = torch.arange(start, stop, device=x.device)[keep]
        r = r[keep]
        sim = _similarity(x[rows], x, metric)
        sim[torch.arange(len(rows), device=x.device), rows] = -math.inf  # never itself
        k = int(r.max())
        top = sim.topk(k, dim=1).indices  # the first max(R) results, best first
        rel = (labels[top] == labels[rows].unsqueeze(1)).double()
        ranks = torch.arange(1, k + 1, device=x.device, dtype=torch.float64)
        within = ranks.unsqueeze(0) <= r.unsqueeze(1)  # positions 1..R_q of each query
        rel = rel * within
        hits = rel.cumsum(1)
        rd = r.double()
        sums[0] += rel[:, 0].sum()
        sums[1] += (hits[:, -1] / rd).sum()
        sums[2] += ((hits / ranks * rel).sum(1) / rd).sum()
    num_queries = int((r_all > 0).sum())
    if num_queries == 0:
        values = [math.nan] * 3
    else:
        values = (sums / num_queries).tolist()
    return {"precision_at_1": values[0], "r_precision": values[1], "map_at_r": values[2],
            "num_queries": num_queries}


def verification_pairs(labels, num_pairs=6000, seed=0, folds=10):
    """Pairs of sample indices for verification, laid out as LFW's ``pairs.txt``.

    The result is ``folds`` consecutive blocks of ``num_pairs / folds`` rows; each block
    holds first its same-class pairs, then as many different-class pairs (LFW: 10 folds
    of 300 + 300). Same-class pairs are drawn uniformly from all pairs of two distinct
    samples of one class, different-class pairs uniformly from all pairs of samples of
    two classes, independently (a pair may repeat when there are few samples); no sample
    is paired with itself. The same ``labels`` and ``seed`` always give the same pairs,
    on any device.

    Args:
        labels: (N,) integer tensor; needs one class with two samples and two classes.
        num_pairs: a positive multiple of ``2 * folds``. Default: 6000, as LFW.
        seed: seed of the draw. Default: 0.
        folds: number of folds. Default: 10, as LFW.

    Returns:
        LongTensor (num_pairs, 2) of indices into ``labels``, on the CPU.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be a 1-D integer tensor, got {_describe(labels)}")
    if not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be a positive int, got {folds!r}")
    if not isinstance(num_pairs, int) or num_pairs < 1 or num_pairs % (2 * folds):
        raise ValueError(f"num_pairs must be a positive multiple of 2 * folds = {2 * folds}, "
                         f"got {num_pairs!r}")
    labels = labels.cpu()
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2 or counts.max() < 2:
        largest = int(counts.max()) if len(counts) else 0
        raise ValueError(f"labels: verification pairs need two classes and a class with two "
                         f"samples, got {len(classes)} classes of at most {largest} samples")
    g = torch.Generator().manual_seed(seed)
    half = num_pairs // 2
    same = _same_pairs(inverse, counts, half, g)
    diff = _different_pairs(inverse, half, g)
    per_fold = half // folds
    return torch.cat([same.view(folds, per_fold, 2), diff.view(folds, per_fold, 2)], 1).view(-1, 2)


def _same_pairs(inverse, counts, n, g):
    """n pairs uniform over all unordered pairs of distinct samples of one class."""
    order = torch.argsort(inverse, stable=True)  # samples grouped by class
    offsets = torch.cumsum(counts, 0) - counts
    pairs_per_class = (counts * (counts - 1) // 2).double()
    cls = torch.multinomial(pairs_per_class, n, replacement=True, generator=g)
    size = counts[cls]
    a = (torch.rand(n, generator=g, dtype=torch.float64) * size).long()
    b = (torch.rand(n, generator=g, dtype=torch.float64) * (size - 1)).long()
    b = b + (b >= a)  # a second, different sample of the class
    return torch.stack([order[offsets[cls] + a], order[offsets[cls] + b]], 1)


def _different_pairs(inverse, n, g):
    """n pairs uniform over all pairs of samples of two classes (rejection sampling:
    each round keeps the draws whose classes differ)."""
    found = []
    total = 0
    while total < n:
        i = torch.randint(len(inverse), (2 * n,), generator=g)
        j = torch.randint(len(inverse), (2 * n,), generator=g)
        ok = inverse[i] != inverse[j]
        found.append(torch.stack([i[ok], j[ok]], 1))
        total += int(ok.sum())
    return torch.cat(found)[:n]


def verification_metrics(features, labels, pairs, metric="cosine", folds=10, far=1e-3):
    """Face-verification figures of the pairs: is each pair of one class or not?

    A pair's score is the cosine similarity of its two features (``'cosine'``, as the
    paper's LFW and YTF evaluation) or minus their L2 distance (``'euclidean'``); a pair
    is called "same" when its score is above a threshold.

    * ``accuracy``, ``accuracy_std``: LFW's protocol. The pairs are split into ``folds``
      consecutive folds (as ``verification_pairs`` lays them out); for each fold the
      threshold that maximises the accuracy on the *other* folds is applied to it. Mean
      and standard deviation (over folds, ``1/folds`` normalisation) of the folds'
      accuracies.
    * ``auc``: area under the ROC of all pairs, the probability that a same-class pair
      scores higher than a different-class pair (ties count one half).
    * ``tar_at_far``: the largest fraction of same-class pairs accepted by a threshold
      that accepts at most ``far`` of the different-class pairs.
    * ``fpr``, ``tpr``: the ROC of all pairs, one point per distinct score, from (0, 0)
      to (1, 1), as CPU float64 tensors for a plot.

    Args:
        features: (N, D) floating point tensor.
        labels: (N,) integer tensor.
        pairs: (P, 2) integer tensor of indices into ``features``; P a multiple of ``folds``.
        metric: ``'cosine'`` (default) or ``'euclidean'``.
        folds: number of folds (default 10).
        far: false accept rate for ``tar_at_far``, in [0, 1] (default 1e-3).

    Returns:
        dict with ``accuracy``, ``accuracy_std``, ``auc``, ``tar_at_far``, ``far`` (floats;
        the fractions in [0, 1]), ``fpr`` and ``tpr``.
    """
    _check(features, labels)
    if (not isinstance(pairs, torch.Tensor) or pairs.dim() != 2 or pairs.shape[1] != 2
            or pairs.is_floating_point()):
        raise ValueError(f"pairs must be an integer tensor (P, 2), got "
                         f"{getattr(pairs, 'shape', type(pairs).__name__)}")
    if not isinstance(folds, int) or folds < 2 or len(pairs) % folds:
        raise ValueError(f"folds must be an int >= 2 that divides the {len(pairs)} pairs, "
                         f"got {folds!r}")
    if not (isinstance(far, (int, float)) and 0 <= far <= 1):
        raise ValueError(f"far must be a number in [0, 1], got {far!r}")
    x = _prepare(features, metric)
    pairs = pairs.to(x.device)
    a, b = x[pairs[:, 0]], x[pairs[:, 1]]
    scores = (a * b).sum(1) if metric == "cosine" else -(a - b).norm(dim=1)
    same = labels.to(x.device)[pairs[:, 0]] == labels.to(x.device)[pairs[:, 1]]
    scores, same = scores.cpu(), same.cpu()
    if same.all() or not same.any():
        raise ValueError("pairs must hold both same-class and different-class pairs")
    accs = _fold_accuracies(scores, same, folds)
    fpr, tpr = _roc(scores, same)
    return {"accuracy": accs.mean().item(), "accuracy_std": accs.std(unbiased=False).item(),
            "auc": _auc(scores, same), "tar_at_far": _tar_at_far(scores, same, far),
            "far": float(far), "fpr": fpr, "tpr": tpr}


def _check_pairs(pairs, same, n, name):
    if (not isinstance(pairs, torch.Tensor) or pairs.dim() != 2 or pairs.shape[1] != 2
            or pairs.is_floating_point()):
        raise ValueError(f"{name} must be an integer tensor (P, 2), got {_describe(pairs)}")
    if (not isinstance(same, torch.Tensor) or same.shape != pairs.shape[:1]
            or same.dtype != torch.bool):
        raise ValueError(f"{name}'s same must be a bool tensor ({len(pairs)},), got "
                         f"{_describe(same)}")
    if len(pairs) and not 0 <= int(pairs.min()) <= int(pairs.max()) < n:
        raise ValueError(f"{name} must index the {n} features, got indices from "
                         f"{int(pairs.min())} to {int(pairs.max())}")
    if same.all() or not same.any():
        raise ValueError(f"{name} must hold both same-class and different-class pairs")


def _pair_scores(x, pairs, metric):
    a, b = x[pairs[:, 0].to(x.device)], x[pairs[:, 1].to(x.device)]
    return ((a * b).sum(1) if metric == "cosine" else -(a - b).norm(dim=1)).cpu()


def protocol_verification(features, pairs, same, threshold_pairs, threshold_same,
                          metric="cosine", far=1e-3):
    """Verification of given pairs with a threshold chosen on other pairs: LFW's protocol,
    where fold k's threshold may not look at fold k (Huang & Learned-Miller,
    UM-CS-2014-003). A pair's score is its cosine similarity (or minus its L2 distance);
    the threshold is the one that maximises the accuracy of "same if score > t" on
    `threshold_pairs` (the lowest of equally good ones), and is applied to `pairs`.

    Args:
        features: (N, D) floating point tensor.
        pairs, same: (P, 2) integer indices into `features` and (P,) bool, the pairs tested.
        threshold_pairs, threshold_same: the same for the pairs the threshold is chosen on.
        metric: ``'cosine'`` (default) or ``'euclidean'``.
        far: false accept rate for ``tar_at_far`` on `pairs` (default 1e-3).

    Returns:
        dict with ``accuracy`` on `pairs`, ``threshold``, ``threshold_accuracy`` (on
        `threshold_pairs`), ``auc`` and ``tar_at_far`` of `pairs` (threshold-free), ``far``,
        the ROC of `pairs` (``fpr``, ``tpr``) and their ``scores``.
    """
    if (not isinstance(features, torch.Tensor) or features.dim() != 2
            or not features.is_floating_point()):
        raise ValueError(f"features must be a floating point tensor (N, D), got "
                         f"{_describe(features)}")
    _check_pairs(pairs, same, len(features), "pairs")
    _check_pairs(threshold_pairs, threshold_same, len(features), "threshold_pairs")
    if not (isinstance(far, (int, float)) and 0 <= far <= 1):
        raise ValueError(f"far must be a number in [0, 1], got {far!r}")
    x = _prepare(features, metric)
    scores, chosen_on = _pair_scores(x, pairs, metric), _pair_scores(x, threshold_pairs, metric)
    same, threshold_same = same.cpu(), threshold_same.cpu()
    t = _best_threshold(chosen_on, threshold_same)  # never sees `pairs`
    fpr, tpr = _roc(scores, same)
    return {"accuracy": ((scores > t) == same).double().mean().item(),
            "threshold": t.item(),
            "threshold_accuracy": ((chosen_on > t) == threshold_same).double().mean().item(),
            "auc": _auc(scores, same), "tar_at_far": _tar_at_far(scores, same, far),
            "far": float(far), "fpr": fpr, "tpr": tpr, "scores": scores}


def standard_error(values):
    """(mean, standard error of the mean) of per-fold figures, as LFW's results page
    reports them: the sample standard deviation (n - 1) over the square root of n."""
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.dim() != 1 or len(v) < 2:
        raise ValueError(f"values must be a 1-D sequence of at least 2 numbers, got {values!r}")
    return v.mean().item(), (v.std(unbiased=True) / math.sqrt(len(v))).item()


def _best_threshold(scores, same):
    """The threshold t maximising the accuracy of "same if score > t" on these pairs:
    one of the midpoints between consecutive distinct scores, or below/above them all.
    The lowest such t wins ties, so the result depends on the scores only."""
    values = torch.unique(scores)  # sorted
    cuts = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])
    # Correct calls at each cut: same pairs above it plus different pairs at or below it.
    pos = torch.searchsorted(values, scores)  # index of each score among the values
    same_at = torch.bincount(pos[same], minlength=len(values)).double()
    diff_at = torch.bincount(pos[~same], minlength=len(values)).double()
    zero = torch.zeros(1, dtype=torch.float64)
    # cut c lies below values[c]: same pairs at values >= c are accepted.
    same_above = torch.cat([same_at.flip(0).cumsum(0).flip(0), zero])
    diff_below = torch.cat([zero, diff_at.cumsum(0)])
    return cuts[torch.argmax(same_above + diff_below)]


def _fold_accuracies(scores, same, folds):
    fold_of = torch.arange(len(scores)) // (len(scores) // folds)
    accs = []
    for k in range(folds):
        test = fold_of == k
        t = _best_threshold(scores[~test], same[~test])  # never looks at fold k
        accs.append(((scores[test] > t) == same[test]).double().mean())
    return torch.stack(accs)


def _roc(scores, same):
    """(fpr, tpr) at every distinct threshold, highest score first, from (0, 0)."""
    order = torch.argsort(scores, descending=True)
    s, y = scores[order], same[order].double()
    last = torch.ones(len(s), dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the last pair of each group of equal scores
    tp, fp = y.cumsum(0)[last], (1 - y).cumsum(0)[last]
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fp / fp[-1]]), torch.cat([zero, tp / tp[-1]])


def _auc(scores, same):
    """Mann-Whitney U / (n_same * n_diff), with average ranks for ties."""
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1  # 1-based rank of each value's first pair
    avg_rank = (first + (counts - 1) / 2).double()[inverse]
    n_same, n_diff = int(same.sum()), int((~same).sum())
    u = avg_rank[same].sum().item() - n_same * (n_same + 1) / 2
    return u / (n_same * n_diff)


def _tar_at_far(scores, same, far):
    """Accept "score > t": at most floor(far * n_diff) different pairs may pass, so t is
    the (k+1)-th highest different-pair score, and TAR the share of same pairs above it."""
    diff = torch.sort(scores[~same], descending=True).values
    k = math.floor(far * len(diff) + 1e-9)
    if k >= len(diff):
        return 1.0
    return (scores[same] > diff[k]).double().mean().item()


def all_pairs_tar_at_far(features, labels, fars=(1e-3, 1e-4, 1e-5), metric="cosine",
                         block_size=None):
    """True accept rate at each false accept rate over all N (N - 1) / 2 pairs.

    Same definition as ``verification_metrics``' ``tar_at_far``, on every unordered pair
    of distinct samples instead of sampled ones: "same" when the score is above a
    threshold t, where t is the (k+1)-th highest different-class score and k =
    floor(far * number of different-class pairs), so at most that share of impostors is
    accepted; ties at t are rejected. Exact, in float64, and in O(block x N) memory: the
    N x N matrix is never held, only each block's same-class scores and the running
    k_max + 1 highest different-class scores (merged across blocks with ``topk``).

    Args:
        features: (N, D) floating point tensor, on any device.
        labels: (N,) integer tensor; needs a same-class and a different-class pair.
        fars: false accept rates in [0, 1]. Default: 1e-3, 1e-4, 1e-5.
        metric: ``'cosine'`` (default) or ``'euclidean'``.
        block_size: rows per block; default keeps a block under 2**23 scores.

    Returns:
        dict with ``tar`` ({far: TAR in [0, 1]}), ``num_same`` and ``num_different``
        (the numbers of pairs).
    """
    _check(features, labels)
    fars = tuple(fars)
    if not fars or not all(isinstance(f, (int, float)) and 0 <= f <= 1 for f in fars):
        raise ValueError(f"fars must be numbers in [0, 1], got {fars!r}")
    x = _prepare(features, metric)
    labels = labels.to(x.device)
    n = len(labels)
    block_size = _block_size(block_size, n)
    counts = torch.unique(labels, return_counts=True)[1]
    num_same = int((counts * (counts - 1) // 2).sum())
    num_diff = n * (n - 1) // 2 - num_same
    if num_same == 0 or num_diff == 0:
        raise ValueError(f"labels: all-pairs verification needs a same-class and a "
                         f"different-class pair, got {num_same} and {num_diff}")
    ks = {far: math.floor(far * num_diff + 1e-9) for far in fars}
    keep = min(max(ks.values()) + 1, num_diff)  # impostor scores needed for every far
    top = torch.empty(0, dtype=torch.float64, device=x.device)  # highest first
    floor = -math.inf  # once `top` is full, only scores above its last can enter it
    genuine = []
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sim = _similarity(x[start:stop], x[start:], metric)  # pairs (i, j >= start)
        rows = torch.arange(start, stop, device=x.device).unsqueeze(1)
        upper = torch.arange(start, n, device=x.device).unsqueeze(0) > rows  # j > i
        same = labels[start:stop].unsqueeze(1) == labels[start:].unsqueeze(0)
        genuine.append(sim[same & upper])
        impostors = sim.masked_fill_(same | ~upper, -math.inf)
        candidates = impostors[impostors > floor]
        if len(candidates):
            top = torch.cat([top, candidates])
            top = top.topk(min(keep, len(top))).values
            if len(top) == keep:
                floor = top[-1].item()
    genuine = torch.cat(genuine)
    tar = {far: 1.0 if k >= num_diff else (genuine > top[k]).double().mean().item()
           for far, k in ks.items()}
    return {"tar": tar, "num_same": num_same, "num_different": num_diff}


def one_shot_error(support, queries, answers, metric="cosine"):
    """Error of one-shot classification by nearest neighbour, per run and averaged.

    Run r has W support features, one per class, and Q query features; query q is given
    the class of its most similar support feature (highest cosine, or smallest L2
    distance; of equal ones the first), and is wrong unless that is ``answers[r, q]``.
    This is how Lake et al. (Science 2015) score their 20 runs of 20-way, 1-shot
    Omniglot classification: the error averaged over runs.

    Args:
        support: (R, W, D) floating point tensor.
        queries: (R, Q, D) floating point tensor.
        answers: (R, Q) integer tensor of indices in 0..W-1.
        metric: ``'cosine'`` (default) or ``'euclidean'``.

    Returns:
        dict with ``error`` (mean over runs of each run's error, in [0, 1]),
        ``error_std`` (their standard deviation over runs, 1/R normalisation) and
        ``per_run`` ((R,) float64 tensor).
    """
    if (not isinstance(support, torch.Tensor) or not isinstance(queries, torch.Tensor)
            or support.dim() != 3 or queries.dim() != 3
            or support.shape[0] != queries.shape[0] or support.shape[2] != queries.shape[2]):
        raise ValueError(f"support and queries must be (R, W, D) and (R, Q, D) tensors, got "
                         f"{_describe(support)} and {_describe(queries)}")
    if not support.is_floating_point() or not queries.is_floating_point():
        raise TypeError(f"support and queries must be floating point, got {support.dtype} "
                        f"and {queries.dtype}")
    if (not isinstance(answers, torch.Tensor) or answers.shape != queries.shape[:2]
            or answers.is_floating_point()):
        raise ValueError(f"answers must be an integer tensor of shape "
                         f"{tuple(queries.shape[:2])}, got {_describe(answers)}")
    if answers.numel() and not 0 <= int(answers.min()) <= int(answers.max()) < support.shape[1]:
        raise ValueError(f"answers must be indices in 0..{support.shape[1] - 1}, got values "
                         f"from {int(answers.min())} to {int(answers.max())}")
    # _prepare works on (N, D) rows: each feature is normalised on its own.
    s = _prepare(support.flatten(0, 1), metric).view(support.shape)
    q = _prepare(queries.flatten(0, 1), metric).view(queries.shape)
    sim = q @ s.transpose(1, 2) if metric == "cosine" else -torch.cdist(q, s)
    wrong = sim.argmax(2) != answers.to(sim.device)
    per_run = wrong.double().mean(1).cpu()
    return {"error": per_run.mean().item(), "error_std": per_run.std(unbiased=False).item(),
            "per_run": per_run}


# ------------------------------------------------------------------ protocol reports
# What main.py prints and records after each evaluation: the metrics above applied to the
# test features by each dataset's protocol, printed as one line each, and returned as
# metrics.csv's values (percent with two decimals, AUC as a fraction).

# The sampled pairs of a labelled test set, laid out as LFW's pairs.txt: 6,000 pairs in 10
# folds, the same pairs at every evaluation (seed 0).
NUM_PAIRS, PAIRS_SEED = 6000, 0
# The 1:1 protocol of IJB-style benchmarks: TAR at these FARs over every pair of a split.
ALL_PAIRS_FARS = (1e-3, 1e-4, 1e-5)


def feature_stats(features, labels, num_classes):
    """What center loss does to the features, in the features' own units:

    - intra: mean Euclidean distance of a feature to its class mean (spread);
    - inter: smallest distance between two class means (separation);
    - ratio: intra / inter, scale-free, lower is tighter (the softmax-only
      features grow without bound, so only the ratio compares runs).
    """
    features = features.double()
    counts = torch.bincount(labels, minlength=num_classes).double()
    means = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    means = means.index_add_(0, labels, features) / counts.clamp(min=1).unsqueeze(1)
    intra = (features - means[labels]).norm(dim=1).mean().item()
    present = means[counts > 0]
    if len(present) < 2:
        return intra, float("nan"), float("nan")
    dist = torch.cdist(present, present)
    dist.fill_diagonal_(float("inf"))
    inter = dist.min().item()
    return intra, inter, intra / inter


def all_pairs_field(far):
    """metrics.csv column of the all-pairs TAR at `far`: tar_all_1e-04 for 1e-4."""
    return f"tar_all_{far:.0e}"


# How a face's feature and its mirror image's are combined at test time: the paper
# concatenates them; their sum is as common. Chosen on View 1 (docs/lfw.md).
MIRROR = "sum"


def combine_mirror(features, mirrored, how=None):
    """The test feature of a face from the features of the image and of its mirror image:
    'sum' (the same width), 'concat' (the paper's: twice the width) or 'none'."""
    how = how or MIRROR
    if how == "sum":
        return features + mirrored
    if how == "concat":
        return torch.cat([features, mirrored], 1)
    if how == "none":
        return features
    raise ValueError(f"mirror combination must be sum, concat or none, got {how!r}")


def report_seen(what, acc, err, features, labels, k):
    """Print the classification accuracy (`what`) and the feature statistics of the
    images of the K trained classes; returns their metrics.csv values."""
    seen = labels < k
    print("{}: {}\t Error rate (%): {}".format(what, acc, err))
    intra, inter, ratio = feature_stats(features[seen], labels[seen], k)
    print("Intra-class spread {:.4f}\t Inter-class separation {:.4f}\t Ratio {:.4f}"
          .format(intra, inter, ratio))
    return dict(accuracy=acc, error_rate=err, intra=f"{intra:.6g}", inter=f"{inter:.6g}",
                ratio=f"{ratio:.6g}")


def measure(features, labels, name):
    """Retrieval and verification of one split of the test features, printed; returns
    the metrics.csv values (percent, AUC as a fraction) and the ROC points."""
    figures = measure_retrieval(features, labels, name)
    pairs = verification_pairs(labels, NUM_PAIRS, seed=PAIRS_SEED)
    v = verification_metrics(features, labels, pairs)
    print_verification(v, name, "cosine", len(pairs))
    # By L2 distance too (printed, not in metrics.csv): cosine sees only a feature's angle,
    # while center loss shapes its length as well; at 2-D the two can disagree widely.
    measure_retrieval(features, labels, name, metric="euclidean")
    v_l2 = verification_metrics(features, labels, pairs, metric="euclidean")
    print_verification(v_l2, name, "L2", len(pairs))
    figures.update(ver_accuracy=f"{100 * v['accuracy']:.2f}",
                   ver_accuracy_std=f"{100 * v['accuracy_std']:.2f}",
                   auc=f"{v['auc']:.5f}", tar_at_far=f"{100 * v['tar_at_far']:.2f}")
    figures.update(measure_all_pairs(features, labels, name))
    return figures, (v["fpr"], v["tpr"])


def print_verification(v, name, metric, num_pairs):
    print("Verification, {} ({}, {} pairs, 10 folds): Accuracy (%): {:.2f} +- {:.2f}\t "
          "AUC: {:.4f}\t TAR@FAR=1e-3 (%): {:.2f}".format(
              name, metric, num_pairs, 100 * v["accuracy"], 100 * v["accuracy_std"], v["auc"],
              100 * v["tar_at_far"]))


def measure_retrieval(features, labels, name, metric="cosine"):
    """Leave-one-out retrieval of these features, printed; the metrics.csv values."""
    r = retrieval_metrics(features, labels, metric=metric)
    print("Retrieval, {} ({}, {} queries): P@1 (%): {:.2f}\t R-precision (%): {:.2f}\t "
          "MAP@R (%): {:.2f}".format(name, "L2" if metric == "euclidean" else metric,
                                     r["num_queries"], 100 * r["precision_at_1"],
                                     100 * r["r_precision"], 100 * r["map_at_r"]))
    return dict(precision_at_1=f"{100 * r['precision_at_1']:.2f}",
                r_precision=f"{100 * r['r_precision']:.2f}",
                map_at_r=f"{100 * r['map_at_r']:.2f}")


def measure_all_pairs(features, labels, name):
    """TAR at ALL_PAIRS_FARS over every pair of these features, printed; the metrics.csv
    values."""
    a = all_pairs_tar_at_far(features, labels, fars=ALL_PAIRS_FARS)
    tars = "\t ".join("TAR@FAR={} (%): {:.2f}".format(f"{far:.0e}".replace("e-0", "e-"), 100 * tar)
                      for far, tar in a["tar"].items())
    print("Verification, {}, all pairs (cosine, {} same-class, {} different-class): {}".format(
        name, a["num_same"], a["num_different"], tars))
    return {all_pairs_field(far): f"{100 * tar:.3f}" for far, tar in a["tar"].items()}


def measure_one_shot(support, queries, answers):
    """Lake et al.'s one-shot error of these features, printed; the metrics.csv values."""
    row, text = {}, []
    for metric, suffix, name in (("cosine", "", "cosine"), ("euclidean", "_l2", "L2")):
        e = one_shot_error(support, queries, answers, metric=metric)
        row["oneshot_error" + suffix] = f"{100 * e['error']:.2f}"
        row["oneshot_error_std" + suffix] = f"{100 * e['error_std']:.2f}"
        text.append("{} {:.2f} +- {:.2f}".format(name, 100 * e["error"], 100 * e["error_std"]))
    print("One-shot, Lake et al. ({} runs of {}-way, 1-shot): Error rate (%): {}".format(
        *support.shape[:2], "\t ".join(text)))
    return row


def measure_lfw(features, labels, lfw, name):
    """LFW's protocol (docs/lfw.md): its test pairs scored by cosine with the threshold
    chosen on pairs of trained people, then retrieval and all-pairs TAR of the test people;
    printed. `lfw` is datasets.load_lfw's description of the split. Returns the
    metrics.csv values and protocol_verification's result (with the test pairs' scores)."""
    v = protocol_verification(features, lfw["pairs"], lfw["same"], lfw["threshold_pairs"],
                              lfw["threshold_same"])
    print("LFW {} (cosine, {} pairs of people never trained on; threshold {:.4f}, chosen on "
          "{} pairs of {}, {:.2f}% right there): Accuracy (%): {:.2f}\t AUC: {:.4f}"
          "\t TAR@FAR=1e-3 (%): {:.2f}".format(
              lfw["split"], len(lfw["pairs"]), v["threshold"], len(lfw["threshold_pairs"]),
              threshold_people(lfw), 100 * v["threshold_accuracy"], 100 * v["accuracy"], v["auc"],
              100 * v["tar_at_far"]))
    row = dict(unseen_ver_accuracy=f"{100 * v['accuracy']:.2f}", unseen_auc=f"{v['auc']:.5f}",
               unseen_tar_at_far=f"{100 * v['tar_at_far']:.2f}",
               lfw_threshold=f"{v['threshold']:.6f}",
               lfw_threshold_accuracy=f"{100 * v['threshold_accuracy']:.2f}")
    test = torch.arange(len(labels)) >= lfw["num_threshold_images"]
    for key, value in measure_retrieval(features[test], labels[test], name).items():
        row["unseen_" + key] = value
    for key, value in measure_all_pairs(features[test], labels[test], name).items():
        row["unseen_" + key] = value
    return row, v


def threshold_people(lfw):
    """Whose pairs choose LFW's threshold, in words: the protocol's pairs are of trained
    people; --lfw-threshold-people H holds H people out of training for it."""
    held = len(lfw.get("threshold_people", []))
    return f"{held:,} training people held out of training" if held else "trained people"


def pair_scores_record(lfw, files, v, epoch):
    """What re-checks an LFW run without its features (main.py writes it as
    pair_scores.json.gz): each test pair's image names, whether it is matched and its
    cosine score, the threshold and where it was chosen, and the people trained on.
    pair_scores_figures() recomputes the figures from it."""
    names = [(files[i], files[j]) for i, j in lfw["pairs"].tolist()]
    return {"split": lfw["split"], "epoch": epoch, "metric": "cosine", "mirror": MIRROR,
            "threshold": v["threshold"], "threshold_accuracy": v["threshold_accuracy"],
            "threshold_pairs": len(lfw["threshold_pairs"]),
            **({"threshold_people": list(lfw["threshold_people"])}
               if lfw.get("threshold_people") else {}),
            "pairs": [[a, b, int(s), float(score)] for (a, b), s, score in
                      zip(names, lfw["same"].tolist(), v["scores"].tolist())],
            "trained_people": list(lfw["trained_people"])}


def pair_scores_figures(record, far=1e-3):
    """From a pair_scores_record: the accuracy (%) at its threshold, the AUC, TAR (%) at
    `far`, the ROC (fpr, tpr), and the best accuracy any threshold would reach on these
    very pairs (%, at best_threshold): an oracle that the protocol does not allow, shown
    only to say what choosing the threshold elsewhere costs."""
    scores = torch.tensor([p[3] for p in record["pairs"]], dtype=torch.float64)
    same = torch.tensor([bool(p[2]) for p in record["pairs"]])
    best = _best_threshold(scores, same)
    fpr, tpr = _roc(scores, same)
    return {"accuracy": 100 * ((scores > record["threshold"]) == same).double().mean().item(),
            "auc": _auc(scores, same), "tar_at_far": 100 * _tar_at_far(scores, same, far),
            "best_accuracy": 100 * ((scores > best) == same).double().mean().item(),
            "best_threshold": best.item(), "fpr": fpr, "tpr": tpr}
