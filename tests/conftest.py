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
