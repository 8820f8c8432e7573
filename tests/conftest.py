"""Shared fixtures: tiny MNIST-format datasets written as real IDX files, so tests
exercise torchvision's loading path without network or the real data."""
import os
import struct
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


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
