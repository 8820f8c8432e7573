"""evaluation.py against hand-worked cases and pure-Python brute force: retrieval
(precision@1, R-precision, MAP@R; Musgrave et al. 2020) and LFW-style verification
(10-fold accuracy with a threshold that never sees its own fold, ROC AUC, TAR at FAR)."""
import doctest
import math

import pytest
import torch

import evaluation as evaluation_module
from evaluation import retrieval_metrics, verification_metrics, verification_pairs

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
METRICS = ["cosine", "euclidean"]
RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "map_at_r")


def clustered(sizes=(1, 2, 5, 9, 14, 19), dim=4, seed=0, spread=1.5):
    """float64 features around one random centre per class (class k has sizes[k] samples),
    in shuffled order. Random float64 features have no ties in distance or similarity,
    so the ranking, and hence every metric, is defined without a tie-breaking rule.
    The default sizes give R = 0 (a lone class), 1, 4, 8, 13, 18."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    centres = spread * torch.randn(len(sizes), dim, generator=g, dtype=torch.float64)
    features = centres[labels] + torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
    return features, labels


def score(a, b, metric):
    """Similarity of two Python lists, higher is more alike. Cosine normalises first and
    then takes the dot product, the order of operations evaluation.py uses, so that
    scores equal in exact arithmetic are equal here exactly when they are there."""
    if metric == "cosine":
        na, nb = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
        return sum((u / na) * (v / nb) for u, v in zip(a, b))
    return -math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b)))


def brute_retrieval(features, labels, metric):
    """Musgrave et al. Sec. 3.2, one query at a time: fully sort all other samples,
    R = other samples of the query's class, skip queries with R = 0."""
    x, y = features.tolist(), labels.tolist()
    p1 = rp = mapr = 0.0
    queries = 0
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        r = sum(y[j] == y[i] for j in others)
        if r == 0:
            continue
        queries += 1
        ranked = sorted(others, key=lambda j: -score(x[i], x[j], metric))
        rel = [y[j] == y[i] for j in ranked]
        p1 += rel[0]
        rp += sum(rel[:r]) / r
        mapr += sum(sum(rel[:k + 1]) / (k + 1) for k in range(r) if rel[k]) / r
    if queries == 0:
        return {key: math.nan for key in RETRIEVAL_KEYS} | {"num_queries": 0}
    return {"precision_at_1": p1 / queries, "r_precision": rp / queries,
            "map_at_r": mapr / queries, "num_queries": queries}


def assert_same_retrieval(got, expected, rel=1e-12):
    assert got["num_queries"] == expected["num_queries"]
    for key in RETRIEVAL_KEYS:
        assert got[key] == pytest.approx(expected[key], rel=rel, abs=1e-15), key


def pair_scores(features, labels, pairs, metric):
    x, y = features.tolist(), labels.tolist()
    scores = [score(x[i], x[j], metric) for i, j in pairs.tolist()]
    same = [y[i] == y[j] for i, j in pairs.tolist()]
    return scores, same


def brute_lfw(scores, same, folds=10):
    """LFW's 10-fold protocol written out: for each fold, try every candidate threshold
    of the other folds (below their lowest score, every midpoint of consecutive distinct
    scores, above the highest), keep the most accurate on those folds (ties: the lowest
    threshold), call the fold's pairs "same" when score > threshold."""
    size = len(scores) // folds
    accs = []
    for k in range(folds):
        test = range(k * size, (k + 1) * size)
        train = [i for i in range(len(scores)) if not k * size <= i < (k + 1) * size]
        values = sorted({scores[i] for i in train})
        cuts = ([values[0] - 1] + [(a + b) / 2 for a, b in zip(values, values[1:])]
                + [values[-1] + 1])
        best, best_correct = None, -1
        for t in cuts:  # ascending: a strict '>' keeps the lowest of equals
            correct = sum((scores[i] > t) == same[i] for i in train)
            if correct > best_correct:
                best, best_correct = t, correct
        accs.append(sum((scores[i] > best) == same[i] for i in test) / size)
    mean = sum(accs) / folds
    return mean, math.sqrt(sum((a - mean) ** 2 for a in accs) / folds)


def brute_auc(scores, same):
    """P(a same-class pair outscores a different-class pair), ties counting one half."""
    pos = [s for s, y in zip(scores, same) if y]
    neg = [s for s, y in zip(scores, same) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def brute_tar(scores, same, far):
    """Largest TPR of "score > t" over every t (each score, and -inf) whose FPR <= far."""
    n_pos, n_neg = sum(same), len(same) - sum(same)
    best = 0.0
    for t in [-math.inf] + list(scores):
        fp = sum(s > t for s, y in zip(scores, same) if not y)
        tp = sum(s > t for s, y in zip(scores, same) if y)
        if fp / n_neg <= far:
            best = max(best, tp / n_pos)
    return best


def tied_data(metric, n=60, seed=0):
    """Features whose pair scores tie a lot, exactly (no rounding can split a tie):
    small integer vectors for euclidean (integer squared distances), for cosine a few
    directions whose normalised components give dot products of at most two nonzero
    terms, each scaled by a power of two (which normalisation undoes exactly)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    if metric == "euclidean":
        features = torch.randint(0, 3, (n, 3), generator=g).double()
        features[:, 0] += 2 * (labels % 2)  # some signal: classes 1, 3 sit further along x
    else:
        directions = torch.tensor([[1., 0, 0], [0, 1, 0], [0, 0, 1], [3, 4, 0], [0, 4, 3]],
                                  dtype=torch.float64)
        # classes prefer a direction but take a random one a third of the time
        pick = torch.where(torch.rand(n, generator=g) < 2 / 3, labels,
                           torch.randint(0, 5, (n,), generator=g))
        scale = 2.0 ** torch.randint(-2, 3, (n, 1), generator=g)
        features = directions[pick] * scale
    return features, labels


# retrieval: hand-worked -------------------------------------------------------------------

# Eight samples on a line (euclidean) or on an arc of a circle at 8 degrees per unit
# (cosine, with arbitrary radii), so that both metrics rank by |x_i - x_j|:
#   x:      0  2  5  10 | 3   8.5 | 20  21
#   class:  A  A  A  A  | B   B   | C   C      R = 3 for A, 1 for B and C
# Ranking of the other samples by distance, first R marked by [], rel 1 = same class:
#   0 (A):   2A 3B 5A  [A B A]  P@1 1  R-prec 2/3  MAP@R (1 + 0 + 2/3) / 3   = 5/9
#   2 (A):   3B 0A 5A  [B A A]  P@1 0  R-prec 2/3  MAP@R (0 + 1/2 + 2/3) / 3 = 7/18
#   5 (A):   3B 2A 8.5B[B A B]  P@1 0  R-prec 1/3  MAP@R (0 + 1/2 + 0) / 3   = 1/6
#   10 (A):  8.5B 5A 3B [B A B] P@1 0  R-prec 1/3  MAP@R                      = 1/6
#   3 (B):   2A                 0, 0, 0   (nearest 2 at 1; 8.5 is 5.5 away)
#   8.5 (B): 10A                0, 0, 0   (10 at 1.5; 3 is 5.5 away)
#   20 (C):  21C                1, 1, 1
#   21 (C):  20C                1, 1, 1
# (Ties, e.g. 0 and 10 both 5 from 5, fall beyond the first R, where they do not count.)
# Means over the 8 queries:
#   P@1    = (1 + 0 + 0 + 0 + 0 + 0 + 1 + 1) / 8            = 3/8
#   R-prec = (2/3 + 2/3 + 1/3 + 1/3 + 0 + 0 + 1 + 1) / 8    = 4/8 = 1/2
#   MAP@R  = (5/9 + 7/18 + 1/6 + 1/6 + 0 + 0 + 1 + 1) / 8   = (59/18) / 8 = 59/144
HAND_X = [0.0, 2.0, 5.0, 10.0, 3.0, 8.5, 20.0, 21.0]
HAND_LABELS = [0, 0, 0, 0, 1, 1, 2, 2]


def hand_features(metric):
    x = torch.tensor(HAND_X, dtype=torch.float64)
    if metric == "euclidean":
        return x.unsqueeze(1)
    angle = torch.deg2rad(8 * x)  # widest gap 21 * 8 = 168 degrees < 180: cos is monotone
    radius = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0, 4.0, 0.25, 1.0], dtype=torch.float64)
    return radius.unsqueeze(1) * torch.stack([angle.cos(), angle.sin()], 1)


@pytest.mark.parametrize("metric", METRICS)
def test_retrieval_hand_worked(metric):
    r = retrieval_metrics(hand_features(metric), torch.tensor(HAND_LABELS), metric=metric)
    assert r["num_queries"] == 8
    assert r["precision_at_1"] == pytest.approx(3 / 8, abs=1e-12)
    assert r["r_precision"] == pytest.approx(1 / 2, abs=1e-12)
    assert r["map_at_r"] == pytest.approx(59 / 144, abs=1e-12)
    # The brute force used below agrees with the hand count too.
    assert_same_retrieval(brute_retrieval(hand_features(metric), torch.tensor(HAND_LABELS),
                                          metric), r)


@pytest.mark.parametrize("metric", METRICS)
def test_retrieval_float32_features(metric):
    # float32 input is computed in float64: the hand case holds in float32 too.
    r = retrieval_metrics(hand_features(metric).float(), torch.tensor(HAND_LABELS),
                          metric=metric)
    assert r["map_at_r"] == pytest.approx(59 / 144, abs=1e-12)


# retrieval: brute force and invariances ---------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_matches_brute_force(metric, seed):
    features, labels = clustered(seed=seed)
    expected = brute_retrieval(features, labels, metric)
    assert 0 < expected["map_at_r"] < expected["r_precision"] < 1  # a non-trivial case
    assert_same_retrieval(retrieval_metrics(features, labels, metric=metric), expected)


@pytest.mark.parametrize("metric", METRICS)
def test_retrieval_blocks_do_not_matter(metric):
    features, labels = clustered(seed=2)
    n = len(labels)
    whole = retrieval_metrics(features, labels, metric=metric)  # default: one block
    for block_size in (1, 7, n, n + 5):
        assert_same_retrieval(retrieval_metrics(features, labels, metric, block_size), whole)


def test_retrieval_default_block_follows_element_budget(monkeypatch):
    # With a budget of 64 similarities the default block is 64 // 50 = 1 query.
    features, labels = clustered(seed=3)
    whole = retrieval_metrics(features, labels)
    monkeypatch.setattr(evaluation_module, "_BLOCK_ELEMENTS", 64)
    assert_same_retrieval(retrieval_metrics(features, labels), whole)


@pytest.mark.parametrize("metric", METRICS)
def test_retrieval_sample_order_does_not_matter(metric):
    features, labels = clustered(seed=4)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    assert_same_retrieval(retrieval_metrics(features[perm], labels[perm], metric, 7),
                          retrieval_metrics(features, labels, metric))


@pytest.mark.parametrize("metric", METRICS)
def test_retrieval_leaves_out_lone_queries(metric):
    features, labels = clustered(sizes=(3, 6, 9, 12), seed=5)
    before = retrieval_metrics(features, labels, metric)
    assert before["num_queries"] == len(labels)
    # Two samples moved to classes of their own: they are no longer queries, but
    # remain in the gallery, as the brute force (which skips R = 0) has it.
    lone = labels.clone()
    lone[[0, 1]] = torch.tensor([100, 101])
    r = retrieval_metrics(features, lone, metric)
    expected = brute_retrieval(features, lone, metric)
    assert expected["num_queries"] == len(labels) - 2
    assert_same_retrieval(r, expected)
    # Also for a block holding nothing but lone queries.
    assert_same_retrieval(retrieval_metrics(features, lone, metric, block_size=1), expected)


@pytest.mark.parametrize("block_size", [None, 1, 3])
def test_retrieval_all_lone_is_nan(block_size):
    features, _ = clustered(seed=6)
    r = retrieval_metrics(features[:5], torch.arange(5), block_size=block_size)
    assert r["num_queries"] == 0
    assert all(math.isnan(r[key]) for key in RETRIEVAL_KEYS)


def test_retrieval_cosine_ignores_norms_euclidean_does_not():
    features, labels = clustered(seed=7)
    g = torch.Generator().manual_seed(0)
    scale = 10 ** (4 * torch.rand(len(labels), 1, generator=g, dtype=torch.float64) - 2)
    assert_same_retrieval(retrieval_metrics(features * scale, labels, "cosine"),
                          retrieval_metrics(features, labels, "cosine"))
    assert (retrieval_metrics(features * scale, labels, "euclidean")["map_at_r"]
            != pytest.approx(retrieval_metrics(features, labels, "euclidean")["map_at_r"]))


def test_retrieval_euclidean_equals_cosine_on_unit_vectors():
    # |a - b|^2 = 2 - 2 cos(a, b) for unit vectors: the two metrics rank alike.
    features, labels = clustered(seed=8)
    unit = torch.nn.functional.normalize(features, dim=1)
    assert_same_retrieval(retrieval_metrics(unit, labels, "euclidean"),
                          retrieval_metrics(unit, labels, "cosine"))


# verification pairs -----------------------------------------------------------------------

def test_verification_pairs_layout():
    _, labels = clustered(sizes=(1, 2, 4, 7, 11, 15), seed=9)
    pairs = verification_pairs(labels, num_pairs=600, seed=0)
    assert pairs.shape == (600, 2) and pairs.dtype == torch.long and pairs.device.type == "cpu"
    assert pairs.min() >= 0 and pairs.max() < len(labels)
    assert (pairs[:, 0] != pairs[:, 1]).all()  # never a sample with itself
    same = (labels[pairs[:, 0]] == labels[pairs[:, 1]]).view(10, 60)
    assert same[:, :30].all() and not same[:, 30:].any()  # LFW: each fold 30 same, 30 different
    same_classes = set(labels[pairs.view(10, 60, 2)[:, :30, 0].flatten()].tolist())
    assert same_classes == {1, 2, 3, 4, 5}  # every class with two samples; never the lone 0


def test_verification_pairs_other_fold_count():
    labels = torch.arange(30) % 3
    pairs = verification_pairs(labels, num_pairs=100, seed=3, folds=5)
    same = (labels[pairs[:, 0]] == labels[pairs[:, 1]]).view(5, 20)
    assert same[:, :10].all() and not same[:, 10:].any()


def test_verification_pairs_deterministic_per_seed():
    _, labels = clustered(seed=10)
    a = verification_pairs(labels, num_pairs=200, seed=5)
    assert torch.equal(a, verification_pairs(labels, num_pairs=200, seed=5))
    assert not torch.equal(a, verification_pairs(labels, num_pairs=200, seed=6))


def test_verification_same_pairs_uniform_over_pairs_not_classes():
    # Class 0 holds 1 of the 1 + 780 same-class pairs: ~3.8 of 3000 draws are expected
    # (a draw uniform over classes would give ~1500).
    labels = torch.cat([torch.zeros(2, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    pairs = verification_pairs(labels, num_pairs=6000, seed=0)
    same_rows = pairs.view(10, 600, 2)[:, :300].reshape(-1, 2)
    assert int((labels[same_rows[:, 0]] == 0).sum()) < 30


@pytest.mark.parametrize("num_pairs", [0, 10, 610, -20, 20.0])
def test_verification_pairs_bad_num_pairs(num_pairs):
    with pytest.raises(ValueError, match="num_pairs"):
        verification_pairs(torch.arange(10) % 2, num_pairs=num_pairs)


@pytest.mark.parametrize("labels", [torch.zeros(10, dtype=torch.long), torch.arange(10)],
                         ids=["one-class", "no-class-with-two"])
def test_verification_pairs_needs_two_classes_and_a_pair(labels):
    with pytest.raises(ValueError, match="two classes"):
        verification_pairs(labels, num_pairs=20)


def test_verification_pairs_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        verification_pairs(torch.arange(10.0), num_pairs=20)
    with pytest.raises(ValueError, match="labels"):
        verification_pairs(torch.zeros(5, 2, dtype=torch.long), num_pairs=20)


# verification metrics ---------------------------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "tied"])
def test_verification_matches_brute_force(metric, tied):
    if tied:
        features, labels = tied_data(metric)
    else:
        features, labels = clustered(sizes=(3, 5, 8, 12, 12), spread=0.8, seed=11)
    pairs = verification_pairs(labels, num_pairs=200, seed=1)
    scores, same = pair_scores(features, labels, pairs, metric)
    if tied:
        assert len(set(scores)) < len(scores) / 5  # the case really ties
    v = verification_metrics(features, labels, pairs, metric=metric)
    accuracy, std = brute_lfw(scores, same)
    assert v["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert v["accuracy_std"] == pytest.approx(std, abs=1e-12)
    assert v["auc"] == pytest.approx(brute_auc(scores, same), abs=1e-12)
    assert 0.5 < v["auc"] < 1  # some signal, not separable
    assert v["far"] == 1e-3
    for far in (0, 1e-2, 0.1, 0.5, 1):
        got = verification_metrics(features, labels, pairs, metric, far=far)["tar_at_far"]
        assert got == pytest.approx(brute_tar(scores, same, far), abs=1e-12), far


def lfw_pairs(last_same_gap, last_diff_gap):
    """Twenty pairs, two per fold, on a line (euclidean score = minus the distance).
    Folds 0-8: a same pair 1 apart, a different pair 9 apart; fold 9's pairs are the
    given distances apart."""
    x, labels, pairs = [], [], []
    for fold in range(10):
        gaps = (1.0, 9.0) if fold < 9 else (last_same_gap, last_diff_gap)
        for is_same, gap in zip((True, False), gaps):
            i = len(x)
            x += [0.0, gap]
            labels += [i, i if is_same else i + 1]
            pairs.append([i, i + 1])
    return torch.tensor(x).unsqueeze(1), torch.tensor(labels), torch.tensor(pairs)


def test_verification_threshold_never_sees_its_fold():
    # Scores (minus distances): folds 0-8 same -1, different -9; fold 9 same -5.5, diff -4.5.
    # Fold 9 tested: the nine other folds hold -9 (x9, different) and -1 (x9, same): the
    #   best threshold is their midpoint -5, which rejects fold 9's same pair (-5.5) and
    #   accepts its different pair (-4.5): accuracy 0.
    # Fold k < 9 tested: the others hold -9 (x8), -5.5 (same), -4.5 (different), -1 (x8):
    #   cuts -7.25 (8 + 9 = 17 right), -5 (8 + 8 = 16), -2.75 (9 + 8 = 17): the lowest
    #   best, -7.25, gets fold k's -1 and -9 right: accuracy 1.
    # Mean (9 * 1 + 0) / 10 = 0.9, std sqrt(0.9 - 0.81) = 0.3.
    # A threshold fitted on all twenty pairs instead would be -7.25 for fold 9 too
    # (10 + 9 = 19 right, vs 18 at -5): fold 9 would score 1/2 and the mean 0.95;
    # one fitted on fold 9 alone would also give it 1/2.
    features, labels, pairs = lfw_pairs(5.5, 4.5)  # fold 9 "flipped"
    v = verification_metrics(features, labels, pairs, metric="euclidean")
    assert v["accuracy"] == pytest.approx(0.9, abs=1e-12)
    assert v["accuracy_std"] == pytest.approx(0.3, abs=1e-12)
    scores, same = pair_scores(features, labels, pairs, "euclidean")
    assert (v["accuracy"], v["accuracy_std"]) == pytest.approx(brute_lfw(scores, same), abs=1e-12)


def test_verification_threshold_is_strict():
    # "Same" means score > threshold. Fold 9's different pair scores -5, exactly the
    # threshold its nine other folds give (midpoint of -9 and -1): rejected, so fold 9 is
    # all right. The other folds get cut -3 (-9 x8, -5, -1 x9: 9 + 9 = 18 right), all
    # right. Accuracy 1; with "score >= t" fold 9 would score 1/2 and the mean 0.95.
    features, labels, pairs = lfw_pairs(1.0, 5.0)
    v = verification_metrics(features, labels, pairs, metric="euclidean")
    assert v["accuracy"] == 1.0 and v["accuracy_std"] == 0.0


@pytest.mark.parametrize("metric", METRICS)
def test_roc_curve(metric):
    for features, labels in (clustered(sizes=(4, 6, 10, 10), spread=0.8, seed=12),
                             tied_data(metric, seed=1)):
        pairs = verification_pairs(labels, num_pairs=200, seed=2)
        v = verification_metrics(features, labels, pairs, metric=metric)
        fpr, tpr = v["fpr"], v["tpr"]
        for curve in (fpr, tpr):
            assert curve.dtype == torch.float64 and curve.device.type == "cpu"
            assert curve[0] == 0 and curve[-1] == 1
            assert (curve[1:] >= curve[:-1]).all()
        # One point per distinct score, plus the origin.
        scores, _ = pair_scores(features, labels, pairs, metric)
        assert len(fpr) == len(tpr) == len(set(scores)) + 1
        # Ties make diagonal segments, whose trapezoids count them one half, as AUC does.
        assert torch.trapezoid(tpr, fpr).item() == pytest.approx(v["auc"], abs=1e-12)


def test_verification_cosine_ignores_norms_euclidean_does_not():
    features, labels = clustered(sizes=(4, 6, 10, 10), spread=0.8, seed=13)
    pairs = verification_pairs(labels, num_pairs=200, seed=3)
    g = torch.Generator().manual_seed(1)
    scaled = features * 10 ** (4 * torch.rand(len(labels), 1, generator=g, dtype=torch.float64) - 2)
    a = verification_metrics(features, labels, pairs, "cosine", far=0.1)
    b = verification_metrics(scaled, labels, pairs, "cosine", far=0.1)
    for key in ("accuracy", "accuracy_std", "auc", "tar_at_far"):
        assert b[key] == pytest.approx(a[key], abs=1e-12), key
    torch.testing.assert_close(b["fpr"], a["fpr"], rtol=0, atol=1e-12)
    torch.testing.assert_close(b["tpr"], a["tpr"], rtol=0, atol=1e-12)
    e = verification_metrics(features, labels, pairs, "euclidean")["auc"]
    assert verification_metrics(scaled, labels, pairs, "euclidean")["auc"] != pytest.approx(e)


def test_verification_euclidean_ranks_as_cosine_on_unit_vectors():
    # Same order of scores, so same ROC, AUC and TAR (accuracy may differ: the midpoint
    # thresholds are midpoints of different numbers).
    features, labels = clustered(sizes=(4, 6, 10, 10), spread=0.8, seed=14)
    unit = torch.nn.functional.normalize(features, dim=1)
    pairs = verification_pairs(labels, num_pairs=200, seed=4)
    c = verification_metrics(unit, labels, pairs, "cosine", far=0.05)
    e = verification_metrics(unit, labels, pairs, "euclidean", far=0.05)
    assert e["auc"] == pytest.approx(c["auc"], abs=1e-12)
    assert e["tar_at_far"] == pytest.approx(c["tar_at_far"], abs=1e-12)
    torch.testing.assert_close(e["fpr"], c["fpr"], rtol=0, atol=1e-12)
    torch.testing.assert_close(e["tpr"], c["tpr"], rtol=0, atol=1e-12)


def test_verification_sample_order_does_not_matter():
    features, labels = clustered(sizes=(4, 6, 10, 10), spread=0.8, seed=15)
    pairs = verification_pairs(labels, num_pairs=200, seed=5)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(2))
    where = torch.argsort(perm)  # new index of each old sample
    a = verification_metrics(features, labels, pairs)
    b = verification_metrics(features[perm], labels[perm], where[pairs])
    for key in ("accuracy", "accuracy_std", "auc", "tar_at_far"):
        assert b[key] == pytest.approx(a[key], abs=1e-12), key


# all-pairs verification -------------------------------------------------------------------

def axis_data(n=40, seed=0):
    """Features along the signed axes, scaled by powers of two: their cosines are exactly
    -1, 0 or 1 whatever the order of operations, so ties are exact in any kernel."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 5
    axis = torch.where(torch.rand(n, generator=g) < 0.6, labels % 3, torch.randint(0, 3, (n,), generator=g))
    sign = torch.where(torch.rand(n, generator=g) < 0.8, 1.0, -1.0).double()
    scale = 2.0 ** torch.randint(-2, 3, (n,), generator=g)
    return torch.eye(3, dtype=torch.float64)[axis] * (sign * scale).unsqueeze(1), labels


def all_pair_scores(features, labels, metric):
    pairs = torch.triu_indices(len(labels), len(labels), 1).T
    return pair_scores(features, labels, pairs, metric)


ALL_PAIRS_FARS = (0, 1e-3, 0.01, 0.1, 0.5, 1)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "tied"])
def test_all_pairs_tar_matches_brute_force(metric, tied):
    if not tied:
        features, labels = clustered(sizes=(3, 5, 8, 12, 12), spread=0.8, seed=11)
    elif metric == "euclidean":
        features, labels = tied_data(metric, n=40)  # integer vectors: exact distances
    else:
        features, labels = axis_data()
    scores, same = all_pair_scores(features, labels, metric)
    if tied:
        assert len(set(scores)) < len(scores) / 20  # the case really ties
    expected = {far: brute_tar(scores, same, far) for far in ALL_PAIRS_FARS}
    assert any(0 < tar < 1 for tar in expected.values())  # not a trivial case
    # one block, a block per row, and blocks that do not divide N give the same result
    for block_size in (len(labels), 1, 7, None):
        got = evaluation_module.all_pairs_tar_at_far(features, labels, ALL_PAIRS_FARS,
                                                     metric=metric, block_size=block_size)
        assert got["num_same"] == sum(same) and got["num_different"] == len(same) - sum(same)
        for far in ALL_PAIRS_FARS:
            assert got["tar"][far] == pytest.approx(expected[far], abs=1e-12), (block_size, far)


def test_all_pairs_tar_float32_and_order_independent():
    features, labels = clustered(sizes=(4, 6, 9, 11), seed=5)
    ref = evaluation_module.all_pairs_tar_at_far(features, labels, (0.01, 0.1))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    shuffled = evaluation_module.all_pairs_tar_at_far(features[order], labels[order], (0.01, 0.1))
    single = evaluation_module.all_pairs_tar_at_far(features.float(), labels, (0.01, 0.1))
    assert shuffled["tar"] == pytest.approx(ref["tar"], abs=1e-12)
    assert single["tar"] == pytest.approx(ref["tar"], abs=1e-6)


def test_all_pairs_tar_errors():
    features = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="same-class and a different-class pair, got 0 and 15"):
        evaluation_module.all_pairs_tar_at_far(features, torch.arange(6))
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"fars must be numbers in \[0, 1\], got \(0.1, 2\)"):
        evaluation_module.all_pairs_tar_at_far(features, labels, fars=(0.1, 2))
    with pytest.raises(ValueError, match="block_size must be a positive int, got 0"):
        evaluation_module.all_pairs_tar_at_far(features, labels, block_size=0)
    with pytest.raises(ValueError, match="same N"):
        evaluation_module.all_pairs_tar_at_far(features[:-1], labels)


# errors -----------------------------------------------------------------------------------

def test_errors_name_the_argument():
    features = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    pairs = torch.tensor([[0, 1], [0, 2], [3, 4], [4, 5], [0, 3], [1, 4], [2, 5], [0, 5],
                          [1, 3], [2, 4]])
    for fn, args in ((retrieval_metrics, ()), (verification_metrics, (pairs,))):
        with pytest.raises(ValueError, match="metric"):
            fn(features, labels, *args, metric="manhattan")
        with pytest.raises(ValueError, match="same N"):
            fn(features[:-1], labels, *args)
        with pytest.raises(ValueError, match="features"):
            fn(features[:, 0], labels, *args)
        with pytest.raises(TypeError, match="features"):
            fn(features.round().long(), labels, *args)
        with pytest.raises(ValueError, match="labels"):
            fn(features, labels.double(), *args)
    with pytest.raises(ValueError, match="block_size"):
        retrieval_metrics(features, labels, block_size=0)
    with pytest.raises(ValueError, match="pairs"):
        verification_metrics(features, labels, pairs.double(), folds=2)
    with pytest.raises(ValueError, match="pairs"):
        verification_metrics(features, labels, pairs[:, :1], folds=2)
    with pytest.raises(ValueError, match="folds"):
        verification_metrics(features, labels, pairs, folds=3)  # 10 pairs
    with pytest.raises(ValueError, match="far"):
        verification_metrics(features, labels, pairs, folds=2, far=1.5)
    with pytest.raises(ValueError, match="same-class and different-class"):
        verification_metrics(features, labels, pairs[:4], folds=2)  # all same-class
    verification_metrics(features, labels, pairs, folds=2)  # the valid call works


def test_docstring_example():
    result = doctest.testmod(evaluation_module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


# CUDA -------------------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_matches_cpu(metric):
    features, labels = clustered(seed=17)
    assert_same_retrieval(retrieval_metrics(features.cuda(), labels.cuda(), metric, 7),
                          retrieval_metrics(features, labels, metric))
    assert_same_retrieval(retrieval_metrics(features.cuda().float(), labels.cuda(), metric),
                          retrieval_metrics(features.float(), labels, metric))
    pairs = verification_pairs(labels, num_pairs=200, seed=0)
    assert torch.equal(verification_pairs(labels.cuda(), num_pairs=200, seed=0), pairs)
    a = verification_metrics(features, labels, pairs, metric, far=0.1)
    b = verification_metrics(features.cuda(), labels.cuda(), pairs.cuda(), metric, far=0.1)
    for key in ("accuracy", "accuracy_std", "auc", "tar_at_far"):
        assert b[key] == pytest.approx(a[key], abs=1e-12), key
    assert b["fpr"].device.type == "cpu"
    torch.testing.assert_close(b["fpr"], a["fpr"], rtol=0, atol=1e-12)
    torch.testing.assert_close(b["tpr"], a["tpr"], rtol=0, atol=1e-12)


def test_retrieval_equals_pytorch_metric_learning():
    """The reference the definitions come from, where it is installed (not a requirement):
    AccuracyCalculator with the query set as its own reference set (leave-one-out)."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 12, (600,), generator=g)
    labels[0] = 99  # a lone class: left out by both
    features = torch.randn(600, 8, generator=g, dtype=torch.float64)
    features += 1.5 * torch.randn(100, 8, generator=g, dtype=torch.float64)[labels % 100]
    for metric, distance in (("cosine", CosineSimilarity()),
                             ("euclidean", LpDistance(normalize_embeddings=False))):
        calc = AccuracyCalculator(include=("precision_at_1", "r_precision",
                                           "mean_average_precision_at_r"),
                                  knn_func=CustomKNN(distance), k="max_bin_count")
        ref = calc.get_accuracy(features, labels, features, labels, ref_includes_query=True)
        ours = retrieval_metrics(features, labels, metric=metric)
        assert ours["precision_at_1"] == pytest.approx(ref["precision_at_1"], abs=1e-9)
        assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-9)
        assert ours["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-9)
