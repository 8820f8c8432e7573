"""LFW: the protocol files, the splits by person, decoding and its error lines on a tiny
tree that conftest.py writes in torchvision's layout; the threshold chosen away from the
test fold; the mirror feature; CosFace against its formula; main.py end to end. The real
data is never needed."""
import hashlib
import importlib.util
import json
import math
import os
import shlex
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import datasets
import evaluation
import main
import models
import utils
from conftest import (LFW_DEV_TEST, LFW_DEV_TRAIN, LFW_PAIRS_DEV_TEST, LFW_PEOPLE, LFW_SINGLE,
                      ROOT, lfw_count, lfw_fold_pairs, lfw_name)
from test_main import FAST, checkpoint, metrics
from test_omniglot import error_line


@pytest.fixture
def own_sums(tiny_lfw, monkeypatch):
    """The MD5 check on: the tiny tree's own sums stand in for torchvision's."""
    folder = os.path.join(tiny_lfw, "lfw-py")
    sums = {}
    for name in datasets.LFW_MD5:
        with open(os.path.join(folder, name), "rb") as f:
            sums[name] = hashlib.md5(f.read()).hexdigest()
    monkeypatch.setattr(datasets, "LFW_MD5", sums)
    return sums


def copy_lfw(tiny_lfw, tmp_path):
    return str(shutil.copytree(tiny_lfw, tmp_path / "root"))


def names(people):
    return {n for n, _ in people}


# ------------------------------------------------------------------------------ protocol

def test_protocol_files_parse_in_both_pair_forms():
    lines = ["2", "Ann\t1\t2", "Bob\t3\t4", "Ann\t1\tBob\t2", "Cid\t2\tAnn\t1"]
    assert datasets._parse_pairs(lines, "p.txt") == [[
        (("Ann", 1), ("Ann", 2), True), (("Bob", 3), ("Bob", 4), True),
        (("Ann", 1), ("Bob", 2), False), (("Cid", 2), ("Ann", 1), False)]]
    folds = datasets._parse_pairs(["2\t1", "A\t1\t2", "A\t1\tB\t1", "C\t1\t2", "C\t2\tD\t1"], "p")
    assert [len(f) for f in folds] == [2, 2] and folds[1][1] == (("C", 2), ("D", 1), False)
    assert datasets._parse_people(["2", "Ann\t3", "Bob\t1"], "d") == [[("Ann", 3), ("Bob", 1)]]
    assert datasets._parse_people(["2", "1", "Ann\t3", "2", "Bob\t1", "Cid\t2"], "p") == [
        [("Ann", 3)], [("Bob", 1), ("Cid", 2)]]
    with pytest.raises(ValueError, match=r"p.txt, line 3: a mismatched pair must be "
                                         r"'Name i Other j', got 'A 1 B'"):
        datasets._parse_pairs(["1", "A\t1\t2", "A\t1\tB"], "p.txt")
    with pytest.raises(ValueError, match=r"p.txt, line 2: a matched pair must be 'Name i j'"):
        datasets._parse_pairs(["1", "A\t1\tB\t2", "A\t1\tB\t1"], "p.txt")
    with pytest.raises(ValueError, match="promises 1 x 4 pairs, it has 3 lines"):
        datasets._parse_pairs(["2", "A\t1\t2", "B\t1\t2", "A\t1\tB\t1"], "p")


@pytest.mark.parametrize("split", datasets.LFW_SPLITS)
def test_every_split_is_disjoint_by_person(tiny_lfw, own_sums, split):
    p = datasets.lfw_protocol(tiny_lfw, split)
    train, test = names(p["train_people"]), names(p["test_people"])
    assert not train & test
    assert {a[0] for a, b, _ in p["test_pairs"]} | {b[0] for a, b, _ in p["test_pairs"]} <= test
    assert ({a[0] for a, b, _ in p["threshold_pairs"]}
            | {b[0] for a, b, _ in p["threshold_pairs"]}) <= train
    everyone = {lfw_name(q) for q in range(LFW_PEOPLE)}
    if split == "view1":
        assert train == {lfw_name(q) for q in LFW_DEV_TRAIN}
        assert test == {lfw_name(q) for q in LFW_DEV_TEST}
    else:
        k = int(split[4:]) - 1
        assert test == {lfw_name(2 * k), lfw_name(2 * k + 1)} and train == everyone - test
        assert len(p["test_pairs"]) == 2 and len(p["threshold_pairs"]) == 18
        assert p["test_pairs"][0] == ((lfw_name(2 * k), 1), (lfw_name(2 * k), 2), True)


def test_a_test_person_in_training_is_an_error(tiny_lfw, tmp_path):
    root = copy_lfw(tiny_lfw, tmp_path)
    path = os.path.join(root, "lfw-py", "peopleDevTrain.txt")
    with open(path) as f:
        lines = f.read().splitlines()
    lines[0] = str(int(lines[0]) + 1)
    lines.append(f"{lfw_name(15)}\t{lfw_count(15)}")  # a View 1 test person
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"1 test people are among the training people "
                                         f"\\({lfw_name(15)}\\)"):
        datasets.lfw_protocol(root, "view1", md5s={})


def test_load_lfw_labels_pairs_and_crops(tiny_lfw, own_sums):
    o = datasets.load_lfw(tiny_lfw, "view1")
    k = len(LFW_DEV_TRAIN)
    images, labels = o["train"]
    assert images.shape == (sum(lfw_count(q) for q in LFW_DEV_TRAIN), 3, 72, 72)
    assert images.dtype == torch.uint8 and o["num_seen"] == k
    assert o["classes"][:k] == [lfw_name(q) for q in LFW_DEV_TRAIN]
    lfw, files = o["extra"]["lfw"], o["extra"]["files"]
    assert lfw["trained_people"] == [lfw_name(q) for q in LFW_DEV_TRAIN]
    # The test pairs index the test set: their files are the pairs of pairsDevTest.txt.
    got = [(files[i], files[j], bool(s)) for (i, j), s in zip(lfw["pairs"].tolist(), lfw["same"])]
    want = []
    for pair in LFW_PAIRS_DEV_TEST:
        a, b = (pair[0], pair[1]), ((pair[0], pair[2]) if len(pair) == 3 else (pair[2], pair[3]))
        want.append((f"{lfw_name(a[0])}_{a[1]:04d}", f"{lfw_name(b[0])}_{b[1]:04d}",
                     len(pair) == 3))
    assert got == want
    test_labels = o["test"][1]
    first = lfw["num_threshold_images"]
    assert (test_labels[first:] >= k).all() and (test_labels[first:] < k + len(LFW_DEV_TEST)).all()
    # the stored crop is the middle 144 px of the original at half resolution
    from PIL import Image
    path = os.path.join(tiny_lfw, "lfw-py", "lfw-deepfunneled", lfw_name(0),
                        f"{lfw_name(0)}_0001.jpg")
    with Image.open(path) as im:
        im.draft("RGB", (125, 125))
        ref = torch.tensor(np.asarray(im.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(images[0], ref[:, 26:98, 26:98])
    mean = (images.double() / 255).mean((0, 2, 3))
    assert torch.allclose(torch.tensor(o["mean"], dtype=torch.float64), mean)


def test_people_with_one_image_can_be_left_out_of_the_classes(tiny_lfw, own_sums):
    o = datasets.load_lfw(tiny_lfw, "view1", min_images=2)
    kept = [lfw_name(q) for q in LFW_DEV_TRAIN if q not in LFW_SINGLE]
    assert o["classes"][:o["num_seen"]] == kept and o["num_seen"] == len(kept)
    assert o["extra"]["lfw"]["people_not_classes"] == [lfw_name(q) for q in LFW_SINGLE]
    assert len(o["train"][1]) == 3 * len(kept)
    # Their images still serve the threshold pairs, with labels that are no class.
    files, labels = o["extra"]["files"], o["test"][1]
    single = files.index(f"{lfw_name(1)}_0001")
    assert labels[single] >= o["num_seen"] + len(LFW_DEV_TEST)


def test_a_subset_of_the_training_people(tiny_lfw, own_sums):
    """--train-classes K: K of the classes, drawn with the seed; the test stays the
    protocol's and the others' images still serve the threshold pairs."""
    full = datasets.load_lfw(tiny_lfw, "view1", min_images=2)
    a = datasets.load_lfw(tiny_lfw, "view1", min_images=2, train_classes=3, seed=1)
    again = datasets.load_lfw(tiny_lfw, "view1", min_images=2, train_classes=3, seed=1)
    k = full["num_seen"]
    drawn = a["classes"][:3]
    assert a["num_seen"] == 3 and drawn == again["classes"][:3]
    assert set(drawn) < set(full["classes"][:k])
    assert drawn == [c for c in full["classes"][:k] if c in drawn]  # the protocol's order
    assert a["extra"]["lfw"]["trained_people"] == drawn
    others = [datasets.load_lfw(tiny_lfw, "view1", min_images=2, train_classes=3, seed=s)
              ["classes"][:3] for s in range(2, 6)]
    assert any(o != drawn for o in others)
    images, labels = a["train"]
    assert labels.unique().tolist() == [0, 1, 2] and len(images) == 3 * 3
    assert a["classes"][3:] == full["classes"][k:]  # the same test people
    assert a["extra"]["files"] == full["extra"]["files"]
    assert torch.equal(a["extra"]["lfw"]["pairs"], full["extra"]["lfw"]["pairs"])
    left = a["extra"]["lfw"]["people_not_classes"]
    assert set(left) == {lfw_name(q) for q in LFW_DEV_TRAIN} - set(drawn)
    test_labels, first = a["test"][1], a["extra"]["lfw"]["num_threshold_images"]
    thresholds = dict(zip(a["extra"]["files"][:first], test_labels[:first].tolist()))
    for name, label in thresholds.items():
        assert (label < 3) == (name.rsplit("_", 1)[0] in drawn)
    for bad in (1, k + 1, 2.0):
        with pytest.raises(ValueError, match=f"--train-classes must be an integer from 2 to "
                                             f"{k} .*got {bad!r}"):
            datasets.load_lfw(tiny_lfw, "view1", min_images=2, train_classes=bad)


# ------------------------------------------------------------------------------ bad input

def test_bad_protocol_files_are_named(tiny_lfw, own_sums, tmp_path):
    root = copy_lfw(tiny_lfw, tmp_path)
    folder = os.path.join(root, "lfw-py")
    with open(os.path.join(folder, "pairs.txt"), "a") as f:
        f.write("\n")  # a blank line: the content differs, the pairs do not
    with open(os.path.join(folder, "pairs.txt"), "rb") as f:
        got = hashlib.md5(f.read()).hexdigest()
    with pytest.raises(ValueError) as e:
        datasets.lfw_protocol(root, "fold3")
    assert str(e.value) == (f"{os.path.join(folder, 'pairs.txt')} has MD5 {got}, not "
                            f"{own_sums['pairs.txt']} (torchvision's): it is damaged or another "
                            f"version; download pairs.txt again from {datasets.LFW_URL}")
    os.remove(os.path.join(folder, "peopleDevTest.txt"))
    with pytest.raises(FileNotFoundError, match="LFW's protocol file .*peopleDevTest.txt is "
                                                "missing: download peopleDevTest.txt"):
        datasets.lfw_protocol(root, "view1")
    for split in ("fold0", "fold11", "view2"):
        with pytest.raises(ValueError, match=f"--lfw-split must be view1 or fold1 ... fold10, "
                                             f"got '{split}'"):
            datasets.lfw_protocol(root, split)


def test_cli_error_lines(tiny_lfw, own_sums, tmp_path, monkeypatch):
    root = copy_lfw(tiny_lfw, tmp_path)
    before = sorted(os.walk(root))
    jpeg = os.path.join(root, "lfw-py", "lfw-deepfunneled", lfw_name(5), f"{lfw_name(5)}_0002.jpg")
    with open(jpeg, "r+b") as f:
        f.truncate(300)
    line = error_line(monkeypatch, "-d", "lfw", "--data-root", root, "--save-dir",
                      str(tmp_path / "out"))
    assert line.startswith(f"error: {jpeg}: cannot decode this JPEG (")
    assert line.endswith("); replace the file with the one of the LFW download")
    shutil.rmtree(os.path.join(root, "lfw-py", "lfw-deepfunneled"))
    line = error_line(monkeypatch, "-d", "lfw", "--data-root", root, "--save-dir",
                      str(tmp_path / "out"))
    images = os.path.join(root, "lfw-py", "lfw-deepfunneled")
    assert line.startswith(f"error: no LFW images in {images}: torchvision no longer downloads "
                           f"LFW; download the deep-funneled images")
    # nothing was written into the data root
    after = sorted(os.walk(root))
    assert [d for d, _, _ in after] == [d for d, _, _ in before if d != images
                                        and not d.startswith(images + os.sep)]
    assert not any(f.endswith((".pt", ".tmp")) for _, _, fs in after for f in fs)


def test_the_log_says_who_a_subset_trains_on(tiny_lfw, own_sums):
    args = main.get_parser().parse_args(["-d", "lfw", "--train-classes", "4", "--seed", "2"])
    dataset = datasets.create("lfw", 4, False, root=tiny_lfw, seed=2, train_classes=4,
                              lfw_min_images=2)
    assert main.lfw_summary(dataset, args).startswith(
        "LFW view1: training on 12 images of 4 people (8 others are no class: fewer than 2 "
        "images, or not among the --train-classes 4 drawn); testing 4 pairs")
    assert dataset.lfw["trained_people"] == datasets.load_lfw(
        tiny_lfw, "view1", min_images=2, train_classes=4, seed=2)["extra"]["lfw"]["trained_people"]


def test_cli_flag_errors(capsys):
    for flags, fragment in (
            (["-d", "lfw", "--lfw-split", "fold11"],
             "argument --lfw-split: invalid choice: 'fold11'"),
            (["--lfw-split", "fold2"], "--lfw-split is for -d lfw, not mnist"),
            (["--augment", "strong"], "--augment is for -d lfw, not mnist"),
            (["-d", "omniglot", "--lfw-threshold-people", "10"],
             "--lfw-threshold-people is for -d lfw, not omniglot"),
            (["-d", "lfw", "--model", "cnn"], "-d lfw has 3 x 64 x 64 face crops: --model "
                                              "resnet10 or resnet18, not cnn"),
            (["--model", "resnet10"], "-d mnist has 1 x 28 x 28 glyphs: --model cnn, not resnet10"),
            (["-d", "lfw", "--holdout-classes", "1,2"], "lfw has its own unseen classes")):
        with pytest.raises(SystemExit) as exc:
            main.main(flags)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err


# ------------------------------------------------------------------------------ evaluation

def test_threshold_is_never_chosen_on_the_test_pairs():
    # Threshold pairs separate at 0.5; the test pairs' own best threshold is 0.1. The
    # protocol's accuracy must be that of 0.5, whatever the test pairs' scores are.
    g = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(40, 3, generator=g), dim=1)

    def pair_with_cosine(i, c):  # image i + 20: a feature at cosine c to image i's
        u, v = features[i], torch.randn(3, generator=g)
        v = F.normalize(v - (v @ u) * u, dim=0)
        features[i + 20] = c * u + (1 - c * c) ** 0.5 * v
        return [i, i + 20]
    threshold_cos = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1]
    threshold_pairs = torch.tensor([pair_with_cosine(i, c) for i, c in enumerate(threshold_cos)])
    threshold_same = torch.tensor([True] * 4 + [False] * 4)
    test_cos = [0.45, 0.35, 0.3, 0.2, 0.05, 0.0]
    pairs = torch.tensor([pair_with_cosine(10 + i, c) for i, c in enumerate(test_cos)])
    same = torch.tensor([True] * 4 + [False] * 2)
    v = evaluation.protocol_verification(features, pairs, same, threshold_pairs, threshold_same)
    assert 0.4 < v["threshold"] < 0.6 and v["threshold_accuracy"] == 1.0
    assert v["accuracy"] == pytest.approx(2 / 6)  # none is above 0.5: the 2 different right
    oracle = max(((torch.tensor(test_cos) > t) == same).float().mean().item()
                 for t in (0.1, 0.25, 0.32))
    assert oracle == 1.0 > v["accuracy"]
    assert v["auc"] == 1.0
    # Moving the test pairs moves nothing of the threshold.
    features[30:36] = F.normalize(torch.randn(6, 3, generator=g), dim=1)
    w = evaluation.protocol_verification(features, pairs, same, threshold_pairs, threshold_same)
    assert w["threshold"] == v["threshold"]


def test_standard_error_as_the_lfw_results_page():
    mean, se = evaluation.standard_error([0.9, 0.92, 0.94, 0.96])
    assert mean == pytest.approx(0.93)
    assert se == pytest.approx(torch.tensor([0.9, 0.92, 0.94, 0.96]).std().item() / 2)
    with pytest.raises(ValueError, match="at least 2 numbers"):
        evaluation.standard_error([0.9])


def test_cosface_loss_matches_its_formula():
    g = torch.Generator().manual_seed(1)
    head = models.CosFace(8, 5)
    x = torch.randn(6, 8, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    cos = head(x)
    s, m = 30.0, 0.25
    loss = models.CosFaceLoss(scale=s, margin=m)(cos, labels)
    brute = 0.0
    for i in range(6):
        w = head.weight / head.weight.norm(dim=1, keepdim=True)
        c = [(x[i] / x[i].norm()) @ w[j] for j in range(5)]
        target = torch.exp(s * (c[labels[i]] - m))
        others = sum(torch.exp(s * c[j]) for j in range(5) if j != labels[i])
        brute += -torch.log(target / (target + others)) / 6
    assert torch.allclose(loss, brute, atol=1e-5)
    x64 = x.double().requires_grad_()
    w64 = head.weight.detach().double().requires_grad_()
    f = lambda a, b: models.CosFaceLoss(s, m)(  # noqa: E731
        F.normalize(a, dim=1) @ F.normalize(b, dim=1).T, labels)
    assert torch.autograd.gradcheck(f, (x64, w64))
    with pytest.raises(ValueError, match="margin must be in"):
        models.CosFaceLoss(margin=-0.1)


def test_arcface_loss_matches_its_formula():
    """ArcFace adds m to the target's angle; past pi - m its logit is cos - m sin m."""
    s, m = 30.0, 0.5
    cos = torch.tensor([[0.9, 0.1, -0.2], [0.3, -0.95, 0.5], [-0.99, 0.2, 0.0]],
                       dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    loss = models.ArcFaceLoss(scale=s, margin=m)(cos, labels)
    brute = 0.0
    for i in range(3):
        c = cos[i].clone()
        theta = torch.acos(c[labels[i]])
        c[labels[i]] = (torch.cos(theta + m) if theta + m <= math.pi
                        else c[labels[i]] - m * math.sin(m))
        brute += -torch.log_softmax(s * c, 0)[labels[i]] / 3
    assert torch.allclose(loss, brute)
    # Rows 2 and 3 are past pi - m (cos -0.95 and -0.99 < cos(pi - 0.5) = -0.878).
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    f = lambda a, b: models.ArcFaceLoss(s, m)(  # noqa: E731
        F.normalize(a, dim=1) @ F.normalize(b, dim=1).T, torch.tensor([0, 1, 2, 0]))
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), w.requires_grad_()))
    assert models.ArcFaceLoss(margin=0)(cos, labels) == models.CosFaceLoss(margin=0)(cos, labels)
    with pytest.raises(ValueError, match="margin must be in"):
        models.ArcFaceLoss(margin=2.0)
    # main.py: each head's own margin by default.
    for head, margin in (("arcface", 0.5), ("cosface", 0.35), ("softmax", 0.35)):
        args = main.get_parser().parse_args(["-d", "lfw", "--head", head])
        main.resolve_defaults(args, set())
        assert args.margin == margin


def test_random_crop_flip_is_a_seeded_window_and_splits_over_ranks():
    images = torch.arange(4 * 3 * 9 * 9, dtype=torch.int64).view(4, 3, 9, 9).to(torch.uint8)
    crop = datasets.RandomCropFlip(6, torch.Generator().manual_seed(5))
    out = crop(images)
    again = datasets.RandomCropFlip(6, torch.Generator().manual_seed(5))(images)
    assert torch.equal(out, again) and out.shape == (4, 3, 6, 6)

    def windows(n):
        return [images[n, :, top:top + 6, left:left + 6] for top in range(4) for left in range(4)]
    for n in range(4):  # each output is a 6x6 window of its image, mirrored or not
        assert any(torch.equal(out[n], w) or torch.equal(out[n], w.flip(2)) for w in windows(n))
    flipped = sum(not any(torch.equal(out[n], w) for w in windows(n)) for n in range(4))
    assert 0 < flipped < 4  # seed 5 mirrors some, not all
    # Two ranks' halves, each drawing for the global batch, equal one process's crops.
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    halves = [datasets.RandomCropFlip(6, g0)(images[:2], 0, 4),
              datasets.RandomCropFlip(6, g1)(images[2:], 2, 4)]
    assert torch.equal(torch.cat(halves), out)


def test_strong_augmentation():
    """--augment strong: seeded, split over ranks as one process; with the whole image as
    the box and nothing else, a bilinear resize (mirrored or not); jitter and erasing as
    documented."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 72, 72), dtype=torch.uint8, generator=g)
    out = datasets.StrongAugment(64, torch.Generator().manual_seed(5))(images)
    again = datasets.StrongAugment(64, torch.Generator().manual_seed(5))(images)
    assert torch.equal(out, again) and out.shape == (8, 3, 64, 64) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 255
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    halves = [datasets.StrongAugment(64, g0)(images[:3], 0, 8),
              datasets.StrongAugment(64, g1)(images[3:], 3, 8)]
    assert torch.allclose(torch.cat(halves), out)
    plain = datasets.StrongAugment(64, torch.Generator().manual_seed(5), scale=(1, 1),
                                   ratio=(1, 1), jitter=0, erase_p=0)(images)
    resized = F.interpolate(images.float(), size=64, mode="bilinear", align_corners=False)
    mirrored = [torch.allclose(p, r.flip(2), atol=0.01) for p, r in zip(plain, resized)]
    assert all(m or torch.allclose(p, r, atol=0.01) for m, p, r in zip(mirrored, plain, resized))
    assert 0 < sum(mirrored) < 8
    # Brightness alone (jitter without contrast or saturation moving a flat grey image):
    # each image scaled by one factor within 1 +- 0.2.
    grey = torch.full((8, 3, 72, 72), 100, dtype=torch.uint8)
    lit = datasets.StrongAugment(64, torch.Generator().manual_seed(5), erase_p=0)(grey)
    assert all(80 - 1e-3 <= v <= 120 + 1e-3 for v in lit.flatten(1).max(1).values.tolist())
    assert all(torch.allclose(x, x.flatten()[0]) for x in lit)  # flat stays flat
    # Erasing sets a box to the image's mean colour: on a half-black, half-white image some
    # pixels take a middle value no crop of it has.
    half = torch.zeros(8, 3, 72, 72, dtype=torch.uint8)
    half[:, :, :, 36:] = 255
    middle = [((x > 20) & (x < 235)).flatten(1).sum(1) for x in (
        datasets.StrongAugment(64, torch.Generator().manual_seed(5), scale=(1, 1), ratio=(1, 1),
                               jitter=0, erase_p=p)(half) for p in (0, 1))]
    # a box of at least 2% of 64 x 64 px (82) and aspect 0.3-3.3 (at most 16 px high), in 3
    # channels, less where it meets the grey column that resizing makes at the edge
    assert (middle[1] - middle[0] >= 3 * (82 - 2 * 16)).all(), middle


def test_test_features_are_the_image_plus_its_mirror(tiny_lfw, own_sums):
    torch.manual_seed(0)
    dataset = datasets.create("lfw", batch_size=8, use_gpu=False, root=tiny_lfw)
    model = models.create("resnet10", dataset.num_classes, feat_dim=16).eval()
    args = main.get_parser().parse_args(["-d", "lfw", "--use-cpu"])
    args.channels_last = False
    acc, err, features, labels, _ = main.test(model, dataset, args)
    x = datasets.normalise(dataset.testloader.images[:, :, 4:68, 4:68], dataset.testloader.mean,
                           dataset.testloader.std)
    with torch.no_grad():
        want = model(x)[0] + model(x.flip(3))[0]
    assert torch.allclose(features, want, atol=1e-5)
    assert torch.equal(evaluation.combine_mirror(want[:, :2], want[:, 2:4], "concat"),
                       torch.cat([want[:, :2], want[:, 2:4]], 1))


# ------------------------------------------------------------------------------ end to end

def test_train_and_evaluate_lfw(tmp_path, tiny_lfw, own_sums, capsys):
    save_dir = str(tmp_path / "run")
    main.main(["-d", "lfw", "--data-root", tiny_lfw, "--save-dir", save_dir, *FAST,
               "--batch-size", "8", "--max-epoch", "2", "--feat-dim", "16", "--lr-model",
               "0.01", "--lfw-split", "fold4", "--weight-cent", "0.003", "--center-update",
               "paper", "--head", "cosface"])
    out = capsys.readouterr().out
    assert ("LFW fold4: training on 48 images of 16 people (2 with fewer than 2 images are no "
            "class); testing 2 pairs (1 matched) of 2 people never trained on (6 images); the "
            "threshold is chosen on 18 pairs of trained people") in out
    rows = metrics(save_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("unseen_ver_accuracy", "unseen_auc", "lfw_threshold", "unseen_map_at_r",
                "unseen_tar_all_1e-03"):
        assert rows[-1][key] != "", key
    assert float(rows[-1]["unseen_ver_accuracy"]) in (0, 50, 100)
    assert os.path.exists(os.path.join(save_dir, "roc.png"))
    saved = torch.load(os.path.join(save_dir, "test_features.pt"), weights_only=True)
    test_people = {lfw_name(6), lfw_name(7)}
    assert {f.rsplit("_", 1)[0] for f in saved["files"]} == test_people
    assert not test_people & set(saved["trained_people"]) and len(saved["trained_people"]) == 16
    assert saved["features"].shape == (len(saved["files"]), 16)
    assert saved["pairs"].shape == (2, 2) and saved["same"].tolist() == [True, False]
    assert [saved["files"][i] for i in saved["pairs"][0]] == [
        f"{lfw_name(6)}_{j:04d}" for j in lfw_fold_pairs(3)[0][1:]]
    # The committed record of the run: the pairs' names and scores, the threshold and the
    # people trained on, from which the logged figures come out again.
    scores = utils.load_pair_scores(os.path.join(save_dir, "pair_scores.json.gz"))
    assert scores["split"] == "fold4" and scores["epoch"] == 2
    assert scores["threshold"] == pytest.approx(float(rows[-1]["lfw_threshold"]), abs=1e-6)
    assert sorted(scores["trained_people"]) == sorted(saved["trained_people"])
    x = F.normalize(saved["features"].float(), dim=1)
    for (a, b, same, score), (i, j), want_same in zip(scores["pairs"], saved["pairs"].tolist(),
                                                      saved["same"].tolist()):
        assert [a, b] == [saved["files"][i], saved["files"][j]] and same == want_same
        assert score == pytest.approx((x[i] @ x[j]).item(), abs=2e-3)  # features in float16
    again = evaluation.pair_scores_figures(scores)
    assert f"{again['accuracy']:.2f}" == rows[-1]["unseen_ver_accuracy"]
    assert f"{again['auc']:.5f}" == rows[-1]["unseen_auc"]
    assert again["best_accuracy"] >= again["accuracy"]
    ckpt = checkpoint(save_dir)
    assert ckpt["args"]["lfw_split"] == "fold4" and ckpt["args"]["model"] == "resnet10"
    # --evaluate takes the split and the model from the checkpoint, same figures.
    path = os.path.join(save_dir, "checkpoint.pth.tar")
    main.main(["-d", "lfw", "--data-root", tiny_lfw, "--use-cpu", "--evaluate", "--resume", path])
    evaluated = capsys.readouterr().out
    starts = ("Accuracy", "LFW fold4 (", "Retrieval", "Verification")

    def figures(text):
        return [line for line in text.splitlines() if line.startswith(starts)]
    assert len(figures(evaluated)) == 4 and figures(evaluated) == figures(out)[-4:]
    # Resuming on another split would train other people: refused.
    with pytest.raises(SystemExit) as exc:
        main.main(["-d", "lfw", "--data-root", tiny_lfw, "--use-cpu", "--save-dir", save_dir,
                   "--lfw-split", "fold5", "--max-epoch", "3", "--feat-dim", "16", "--head",
                   "cosface", "--center-update", "paper", "--resume", path])
    assert exc.value.code.endswith("was made with --lfw-split fold4 (now fold5): pass the "
                                   "checkpoint's values, or leave out --resume to start a new run")


def test_readme_face_command_trains_the_recipe(tmp_path, tiny_lfw, own_sums):
    """README's one face command as written, its DATA and save folder put in a temporary
    place and one epoch instead of forty: it trains View 1's recipe and records it."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        commands = [line for line in f.read().splitlines()
                    if line.startswith("python main.py -d lfw")]
    assert len(commands) == 1, commands
    words = shlex.split(commands[0])[2:]
    assert words[words.index("--data-root") + 1] == "DATA"
    words[words.index("--data-root") + 1] = tiny_lfw
    words[words.index("--save-dir") + 1] = save_dir = str(tmp_path / "faces")
    main.main(words + ["--max-epoch", "1"])
    with open(os.path.join(save_dir, "run.json")) as f:
        record = json.load(f)
    assert record["outcome"] == "finished"
    ckpt = checkpoint(save_dir)
    recipe = {key: ckpt["args"][key] for key in main.LFW_RECIPE if key != "max_epoch"}
    assert recipe == {key: v for key, v in main.LFW_RECIPE.items() if key != "max_epoch"}
    assert (ckpt["args"]["model"], ckpt["args"]["feat_dim"]) == ("resnet10", 512)
    assert os.path.exists(os.path.join(save_dir, "pair_scores.json.gz"))


def test_test_feature_variants_from_a_checkpoint(tmp_path, tiny_lfw, own_sums, capsys):
    """experiments/lfw_test_feature.py on a run's checkpoint: its 'sum' row is the figure
    main.py logged; centring and whitening use the trained people's features only."""
    spec = importlib.util.spec_from_file_location(
        "lfw_test_feature", os.path.join(ROOT, "experiments", "lfw_test_feature.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    save_dir = str(tmp_path / "lfw-run")
    main.main(["-d", "lfw", "--data-root", tiny_lfw, "--save-dir", save_dir, *FAST,
               "--batch-size", "8", "--max-epoch", "1", "--feat-dim", "16"])
    capsys.readouterr()
    script.main_(["--data-root", tiny_lfw, os.path.join(save_dir, "checkpoint.pth.tar")])
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines()
            if line.startswith("| lfw-run | ")]
    assert [r[1] for r in rows] == ["none", "sum", "concat", "sum - trained people's mean",
                                    "sum, PCA-whitened on the trained people"]
    logged = metrics(save_dir)[-1]
    assert rows[1][2:4] == [logged["unseen_ver_accuracy"], f"{float(logged['unseen_auc']):.4f}"]
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1., 5., 9.])
    trained = torch.arange(10) < 6
    centred, white = script.fitted(x, trained, "mean"), script.fitted(x, trained, "whiten")
    assert torch.allclose(centred[trained].mean(0), torch.zeros(3), atol=1e-6)
    cov = torch.cov(white[trained].T.double())  # unit variance on the trained people's, less eps
    assert torch.allclose(cov, torch.diag(cov.diag()), atol=1e-5) and (cov.diag() < 1).all()
    x[~trained] += 100  # the test people's features never move the statistics
    assert torch.equal(script.fitted(x, trained, "mean")[trained], centred[trained])


def test_sharded_loaders_crop_as_one_process():
    # torchrun: each rank's part of each augmented batch is that part of one process's batch.
    images = torch.randint(0, 256, (20, 3, 9, 9), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20)

    def batches(rank, world):
        g = torch.Generator().manual_seed(3)
        loader = datasets.TensorLoader(images, labels, 8, [0.5] * 3, [0.25] * 3, shuffle=True,
                                       generator=g, rank=rank, world_size=world,
                                       transform=datasets.RandomCropFlip(6, g))
        return [b for _ in range(2) for b in loader]  # two epochs
    single = batches(0, 1)
    ranks = [batches(r, 2) for r in range(2)]
    for i, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][i][0], ranks[1][i][0]]), x)
        assert torch.equal(torch.cat([ranks[0][i][1], ranks[1][i][1]]), y)


def test_resumed_lfw_run_equals_an_uninterrupted_one(tmp_path, tiny_lfw, own_sums):
    flags = ["-d", "lfw", "--data-root", tiny_lfw, *FAST, "--batch-size", "8", "--feat-dim",
             "8", "--lr-model", "0.01", "--weight-cent", "0.01", "--center-update", "paper"]
    main.main([*flags, "--max-epoch", "2", "--save-dir", str(tmp_path / "straight")])
    main.main([*flags, "--max-epoch", "1", "--save-dir", str(tmp_path / "resumed")])
    main.main([*flags, "--max-epoch", "2", "--save-dir", str(tmp_path / "resumed"), "--resume",
               str(tmp_path / "resumed" / "checkpoint.pth.tar")])
    a, b = checkpoint(str(tmp_path / "straight")), checkpoint(str(tmp_path / "resumed"))
    for key in ("model", "center_loss"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert torch.equal(a["shuffle_rng"], b["shuffle_rng"])


@pytest.mark.parametrize("batch_size, world_size, left_out", [
    (85, 1, 1),   # 256 = 3 x 85 + 1: the one image sits out this epoch
    (127, 1, 0),  # 256 = 2 x 127 + 2: a last batch of two trains
    (254, 2, 2),  # a last batch of 2 over 2 processes, one image each: both sit out
    (252, 2, 0),  # a last batch of 4: two images a process train
])
def test_no_process_trains_on_a_batch_of_one_image(tiny_data, batch_size, world_size, left_out):
    # BatchNorm, the resnets' feature layer, cannot train on one image: LFW fold 10's 7,809
    # training images left a last batch of 1 at --batch-size 128, and the run stopped.
    seen = 0
    for rank in range(world_size):
        loader = datasets.create("mnist", batch_size, False, root=tiny_data, rank=rank,
                                 world_size=world_size).trainloader
        sizes = [len(labels) for images, labels in loader]
        assert len(sizes) == len(loader) and min(sizes) >= 2, sizes
        seen += sum(sizes)
    assert seen == 256 - left_out


def test_threshold_pairs_of_held_out_people():
    people = [("A", 7), ("B", 2), ("C", 3)]
    pairs = datasets.threshold_people_pairs(people, seed=1)
    matched = [(a, b) for a, b, same in pairs if same]
    mismatched = [(a, b) for a, b, same in pairs if not same]
    # A's first five images only (10 pairs), B's one pair, C's three
    assert len(matched) == 10 + 1 + 3 == len(mismatched) == len(set(mismatched))
    assert all(a[0] == b[0] and a[1] < b[1] <= 5 for a, b in matched)
    assert all(a[0] != b[0] for a, b in mismatched)
    assert all(1 <= i <= dict(people)[n] for pair in mismatched for n, i in pair)
    assert pairs == datasets.threshold_people_pairs(people, seed=1)
    assert pairs != datasets.threshold_people_pairs(people, seed=2)
    # two people with few images: every mismatched pair there is, not a pair more
    few = datasets.threshold_people_pairs([("A", 5), ("B", 2)], seed=1)
    assert sum(same for *_, same in few) == 11 and sum(not same for *_, same in few) == 10


def test_threshold_on_held_out_training_people(tmp_path, tiny_lfw, own_sums, capsys):
    """--lfw-threshold-people H: H training people with two or more images, drawn with the
    seed, are not trained on; the threshold is chosen on pairs of their images alone."""
    full = datasets.load_lfw(tiny_lfw, "view1", min_images=2)
    o = datasets.load_lfw(tiny_lfw, "view1", min_images=2, threshold_people=3, seed=1)
    lfw, files, labels = o["extra"]["lfw"], o["extra"]["files"], o["test"][1]
    held = lfw["threshold_people"]
    trained = full["extra"]["lfw"]["trained_people"]
    assert len(held) == 3 and set(held) < set(trained)
    assert lfw["trained_people"] == [n for n in trained if n not in held]
    assert o["num_seen"] == len(trained) - 3 and len(o["train"][1]) == 3 * (len(trained) - 3)
    person = [f.rsplit("_", 1)[0] for f in files]
    for (i, j), same in zip(lfw["threshold_pairs"].tolist(), lfw["threshold_same"].tolist()):
        assert person[i] in held and person[j] in held and (person[i] == person[j]) == same
        assert labels[i] >= o["num_seen"] + len(LFW_DEV_TEST)  # no class
    assert lfw["threshold_same"].tolist() == [True] * 9 + [False] * 9  # 3 images each
    # the test pairs are the protocol's, as without
    name = lambda d, k: [d["extra"]["files"][i] for i in d["extra"]["lfw"]["pairs"][:, k]]  # noqa: E731
    assert name(o, 0) == name(full, 0) and name(o, 1) == name(full, 1)
    others = [datasets.load_lfw(tiny_lfw, "view1", min_images=2, threshold_people=3, seed=s)
              ["extra"]["lfw"]["threshold_people"] for s in range(2, 6)]
    assert any(h != held for h in others)
    for bad in (1, len(trained) - 1):
        with pytest.raises(ValueError, match=f"--lfw-threshold-people must be 0 or an integer "
                                             f"from 2 to {len(trained) - 2} .*got {bad!r}"):
            datasets.load_lfw(tiny_lfw, "view1", min_images=2, threshold_people=bad)
    save_dir = str(tmp_path / "run")
    main.main(["-d", "lfw", "--data-root", tiny_lfw, "--save-dir", save_dir, *FAST,
               "--batch-size", "8", "--max-epoch", "1", "--feat-dim", "16",
               "--lfw-threshold-people", "3"])
    out = capsys.readouterr().out
    assert ("the threshold is chosen on 18 pairs of 3 training people held out of training"
            in out)
    assert "chosen on 18 pairs of 3 training people held out of training, " in out
    scores = utils.load_pair_scores(os.path.join(save_dir, "pair_scores.json.gz"))
    assert scores["threshold_people"] == held and scores["threshold_pairs"] == 18
    assert not set(held) & set(scores["trained_people"])
    assert checkpoint(save_dir)["args"]["lfw_threshold_people"] == 3


def test_train_with_strong_augmentation(tmp_path, tiny_lfw, own_sums, capsys):
    save_dir = str(tmp_path / "run")
    main.main(["-d", "lfw", "--data-root", tiny_lfw, "--save-dir", save_dir, *FAST,
               "--batch-size", "8", "--max-epoch", "1", "--feat-dim", "16", "--augment", "strong"])
    assert "Finished." in capsys.readouterr().out
    assert checkpoint(save_dir)["args"]["augment"] == "strong"


def test_a_packed_copy_of_lfw_loads_as_the_original(tiny_lfw, own_sums, tmp_path):
    """experiments/lfw_pack.py: the 72 x 72 crops re-encoded in one tar file; unpacked, the
    same people, pairs and labels, and each image the original crop through JPEG."""
    import io
    import tarfile
    from PIL import Image

    def through_jpeg(crops):
        out = []
        for crop in crops:
            buf = io.BytesIO()
            Image.fromarray(crop.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=95)
            out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1))
        return torch.stack(out)
    spec = importlib.util.spec_from_file_location(
        "lfw_pack", os.path.join(ROOT, "experiments", "lfw_pack.py"))
    lfw_pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lfw_pack)
    out = str(tmp_path / "lfw72.tar.gz")
    assert lfw_pack.pack(tiny_lfw, out, quality=95) == 56
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "packed", filter="data")
    for split in ("view1", "fold3"):
        a = datasets.load_lfw(tiny_lfw, split, min_images=2)
        b = datasets.load_lfw(str(tmp_path / "packed"), split, min_images=2)
        assert a["classes"] == b["classes"] and a["extra"]["files"] == b["extra"]["files"]
        for part in ("train", "test"):
            assert torch.equal(a[part][1], b[part][1])
            assert torch.equal(through_jpeg(a[part][0]), b[part][0])


def test_a_larger_input_is_the_same_face_at_a_higher_resolution(tmp_path, tiny_lfw, own_sums,
                                                                capsys):
    """--input-size 96: the middle 144 px of each image resized to 108 x 108 (crops of 96
    train the network, whose feature layer reads a 6 x 6 map); 64 stays as it was."""
    from PIL import Image
    small = datasets.load_lfw(tiny_lfw, "view1", min_images=2)
    large = datasets.load_lfw(tiny_lfw, "view1", min_images=2, input_size=96)
    assert small["train"][0].shape[1:] == (3, 72, 72)
    assert large["train"][0].shape[1:] == (3, 108, 108)
    assert large["classes"] == small["classes"] and torch.equal(large["test"][1], small["test"][1])
    name = large["extra"]["files"][0]
    person = name.rsplit("_", 1)[0]
    with Image.open(os.path.join(tiny_lfw, "lfw-py", "lfw-deepfunneled", person,
                                 name + ".jpg")) as im:
        want = np.asarray(im.convert("RGB").crop((53, 53, 197, 197))
                          .resize((108, 108), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal(large["test"][0][0], torch.from_numpy(want.copy()))
    with pytest.raises(ValueError, match=r"--input-size must be one of \(64, 96, 112\), got 80"):
        datasets.load_lfw(tiny_lfw, "view1", input_size=80)
    with pytest.raises(ValueError, match="input_size must be a multiple of 16, got 100"):
        models.create("resnet10", 5, input_size=100)
    model = models.create("resnet10", 5, feat_dim=16, input_size=112)
    assert model.fc.in_features == 256 * 7 * 7
    assert model(torch.zeros(2, 3, 112, 112))[0].shape == (2, 16)
    save_dir = str(tmp_path / "run")
    main.main(["-d", "lfw", "--data-root", tiny_lfw, "--save-dir", save_dir, *FAST,
               "--batch-size", "8", "--max-epoch", "1", "--feat-dim", "16", "--input-size", "96"])
    assert "Finished." in capsys.readouterr().out
    assert checkpoint(save_dir)["args"]["input_size"] == 96
