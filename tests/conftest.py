"""Shared fixtures: tiny MNIST-format datasets written as real IDX files, so tests
exercise torchvision's loading path without network or the real data."""
import os
import struct
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own decoded-image cache (datasets.cache_dir; main.py's subprocesses
    inherit it): no test reads another's or the user's ~/.cache."""
    monkeypatch.setenv("CENTER_LOSS_CACHE", str(tmp_path / "cache"))


def write_idx(path, array):
    """Write a uint8 array in the IDX format of LeCun's MNIST files."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.tobytes())


def make_images(labels, rng):
    """28x28 digits-like images: a bright 6x6 block whose place depends on the class,
    on noise, so a small network learns them in a few epochs."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        r, c = 2 + 8 * (label // 3), 2 + 8 * (label % 3)
        images[i, r:r + 6, c:c + 6] = 255
    return images


def write_dataset(root, folder="MNIST", n_train=256, n_test=128, seed=0):
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        write_idx(os.path.join(raw, f"{split}-images-idx3-ubyte"), make_images(labels, rng))
        write_idx(os.path.join(raw, f"{split}-labels-idx1-ubyte"), labels)
    return str(root)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A data root holding tiny MNIST and FashionMNIST raw IDX files."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, "MNIST")
    write_dataset(root, "FashionMNIST", seed=1)
    return str(root)


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory):
    """64 training and 32 test images: for the bf16 path, emulated (slow) on CPUs
    without bf16 instructions."""
    return write_dataset(tmp_path_factory.mktemp("micro"), n_train=64, n_test=32)


def omniglot_image(character, drawer, size=105):
    """A 105x105 mode '1' PNG as Omniglot's: black strokes on white. The stroke is a bar
    whose place depends on the character, shifted a little by the drawer."""
    from PIL import Image
    pixels = np.ones((size, size), dtype=bool)
    r = 10 + 17 * (character % 5) + drawer % 3
    c = 10 + 17 * (character // 5 % 5) + drawer % 2
    pixels[r:r + 12, c:c + 4] = False
    return Image.fromarray(pixels)


def write_omniglot(root, background=((("Alpha", 3), ("Beta", 3))),
                   evaluation=((("Gamma", 2), ("Delta", 2)))):
    """A tiny Omniglot in torchvision's layout: omniglot-py/<split>/<Alphabet>/characterNN/
    <id>_<drawer>.png, 20 drawers each; and omniglot-one-shot/all_runs.zip with 2 runs of
    4-way one-shot on the evaluation characters, whose answers are not in file order."""
    import zipfile
    char_id = 0
    for split, alphabets in (("images_background", background),
                             ("images_evaluation", evaluation)):
        for alphabet, count in alphabets:
            for c in range(1, count + 1):
                folder = os.path.join(root, "omniglot-py", split, alphabet, f"character{c:02d}")
                os.makedirs(folder, exist_ok=True)
                char_id += 1
                for drawer in range(1, 21):
                    omniglot_image(char_id, drawer).save(
                        os.path.join(folder, f"{char_id:04d}_{drawer:02d}.png"))
    zip_dir = os.path.join(root, "omniglot-one-shot")
    os.makedirs(zip_dir, exist_ok=True)
    # run r: training class c is character first + c; test item i shows ANSWERS[r][i]
    with zipfile.ZipFile(os.path.join(zip_dir, "all_runs.zip"), "w") as z:
        for r, answers in enumerate(ONE_SHOT_ANSWERS, 1):
            lines = []
            for c in range(4):
                z.writestr(f"run{r:02d}/training/class{c + 1:02d}.png",
                           png_bytes(omniglot_image(10 + c, 1)))
            for i, a in enumerate(answers):
                z.writestr(f"run{r:02d}/test/item{i + 1:02d}.png",
                           png_bytes(omniglot_image(10 + a, 2 + i)))
                lines.append(f"run{r:02d}/test/item{i + 1:02d}.png "
                             f"run{r:02d}/training/class{a + 1:02d}.png")
            z.writestr(f"run{r:02d}/class_labels.txt", "\n".join(lines) + "\n")
    return str(root)


# Each run's answers: the training class (0-based) of test items 1-4.
ONE_SHOT_ANSWERS = [[2, 0, 3, 1], [1, 3, 0, 2]]


def png_bytes(image):
    import io
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="session")
def tiny_omniglot(tmp_path_factory):
    """A data root holding a tiny Omniglot (6 background, 4 evaluation characters) and
    a 2-run one-shot zip."""
    return write_omniglot(tmp_path_factory.mktemp("omniglot"))


# ----------------------------------------------------------------------------- LFW

LFW_PEOPLE = 20  # Person_00 ... Person_19; set k of people.txt: people 2k and 2k + 1
LFW_SINGLE = (1, 3)  # the people with one image; the others have three


def lfw_count(p):
    return 1 if p in LFW_SINGLE else 3


def lfw_name(p):
    return f"Person_{p:02d}"


def lfw_image(p, i, size=250):
    """A 250x250 RGB 'face': a block whose colour and place depend on the person, on a
    background that varies with the image, so that a network can tell people apart."""
    from PIL import Image
    rng = np.random.default_rng(100 * p + i)
    pixels = rng.integers(0, 80, size=(size, size, 3))
    r, c = 70 + 12 * (p % 5), 70 + 12 * (p // 5)
    pixels[r:r + 60, c:c + 60] = [(37 * p) % 256, (91 * p) % 256, 200]
    return Image.fromarray(pixels.astype(np.uint8))


def _people_lines(people):
    return [f"{lfw_name(p)}\t{lfw_count(p)}" for p in people]


def _pair_line(pair):
    if len(pair) == 3:  # matched: Name i j
        return f"{lfw_name(pair[0])}\t{pair[1]}\t{pair[2]}"
    return f"{lfw_name(pair[0])}\t{pair[1]}\t{lfw_name(pair[2])}\t{pair[3]}"


# View 1: people 0-11 train (1 and 3 with one image), 12-19 test.
LFW_DEV_TRAIN, LFW_DEV_TEST = range(12), range(12, 20)
LFW_PAIRS_DEV_TRAIN = [(0, 1, 2), (2, 2, 3), (1, 1, 4, 1), (5, 2, 6, 3)]
LFW_PAIRS_DEV_TEST = [(12, 1, 2), (13, 1, 3), (14, 1, 15, 2), (16, 3, 17, 1)]


def lfw_fold_pairs(k):
    """Fold k (0-based) of the tiny pairs.txt: one matched and one mismatched pair of set k."""
    a, b = 2 * k, 2 * k + 1
    return [(a, 1, 2), (a, 2, b, 1)]


def write_lfw(root):
    """A tiny LFW in torchvision's layout: lfw-py/lfw-deepfunneled/<Name>/<Name>_NNNN.jpg
    and the protocol files in their official formats (both pair-line forms)."""
    folder = os.path.join(root, "lfw-py")
    for p in range(LFW_PEOPLE):
        os.makedirs(os.path.join(folder, "lfw-deepfunneled", lfw_name(p)), exist_ok=True)
        for i in range(1, lfw_count(p) + 1):
            lfw_image(p, i).save(os.path.join(folder, "lfw-deepfunneled", lfw_name(p),
                                              f"{lfw_name(p)}_{i:04d}.jpg"), quality=90)
    files = {
        "peopleDevTrain.txt": [str(len(LFW_DEV_TRAIN))] + _people_lines(LFW_DEV_TRAIN),
        "peopleDevTest.txt": [str(len(LFW_DEV_TEST))] + _people_lines(LFW_DEV_TEST),
        "pairsDevTrain.txt": ["2"] + [_pair_line(p) for p in LFW_PAIRS_DEV_TRAIN],
        "pairsDevTest.txt": ["2"] + [_pair_line(p) for p in LFW_PAIRS_DEV_TEST],
        "people.txt": ["10"] + [line for k in range(10)
                                for line in ["2"] + _people_lines([2 * k, 2 * k + 1])],
        "pairs.txt": ["10\t1"] + [_pair_line(p) for k in range(10) for p in lfw_fold_pairs(k)],
    }
    for name, lines in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture(scope="session")
def tiny_lfw(tmp_path_factory):
    """A data root holding a tiny LFW: 20 people, 56 JPEGs, all protocol files."""
    return write_lfw(tmp_path_factory.mktemp("lfw"))
