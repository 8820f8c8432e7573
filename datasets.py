"""MNIST and Fashion-MNIST, decoded once into tensors and served in batches.

The whole training set is 47 MB of uint8, so it lives in memory (on the GPU when
training there) and batches are drawn by indexing: no per-sample decoding, no worker
processes, and data loading never limits speed. Shuffling uses a seeded
``torch.Generator`` whose state goes into checkpoints, so a resumed run sees the same
batches as one that was never interrupted.
"""
import math
import os

import torch
import torchvision

__all__ = ["create", "split_classes", "DATASETS", "TensorLoader"]

# (torchvision class, mean, std of the training images, short class names for legends)
DATASETS = {
    "mnist": (torchvision.datasets.MNIST, 0.1307, 0.3081,
              [str(d) for d in range(10)]),
    "fashion-mnist": (torchvision.datasets.FashionMNIST, 0.2860, 0.3530,
                      ["T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                       "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]),
}
RAW_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


class TensorLoader:
    """Batches of normalised images (N, 1, 28, 28) float32 and labels (N,) int64.

    Like a DataLoader with ``drop_last=False``: ``len()`` is the number of batches, and
    with ``shuffle=True`` each pass draws a new permutation from ``generator``. With
    ``world_size`` > 1 (torchrun), every rank draws the same global batches, from the
    same seeded generator, and yields its own contiguous part of each: the union over
    the ranks is exactly the batch a single process would get. ``drop`` samples at the
    end of each pass are left out (set by `create` so that the last batch, too, splits
    evenly over the ranks).
    """

    def __init__(self, images, labels, batch_size, mean, std, shuffle=False, generator=None,
                 rank=0, world_size=1, drop=0):
        self.images, self.labels = images, labels
        self.batch_size, self.mean, self.std = batch_size, mean, std
        self.shuffle, self.generator = shuffle, generator
        self.rank, self.world_size, self.drop = rank, world_size, drop

    def __len__(self):
        return math.ceil((len(self.labels) - self.drop) / self.batch_size)

    def __iter__(self):
        n = len(self.labels) - self.drop
        if self.shuffle:
            order = torch.randperm(len(self.labels), generator=self.generator)
            order = order.to(self.labels.device)
        for start in range(0, n, self.batch_size):
            lo, hi = _shard(start, min(start + self.batch_size, n), self.rank, self.world_size)
            if self.shuffle:
                idx = order[lo:hi]
                images, labels = self.images[idx], self.labels[idx]
            else:
                images, labels = self.images[lo:hi], self.labels[lo:hi]
            # Same as ToTensor() + Normalize((mean,), (std,)) of the popular script.
            images = (images.unsqueeze(1).float() / 255 - self.mean) / self.std
            yield images, labels


def _shard(start, stop, rank, world_size):
    """This rank's contiguous part of [start, stop), as torch.tensor_split splits it."""
    q, r = divmod(stop - start, world_size)
    lo = start + rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


class Dataset:
    def __init__(self, trainloader, testloader, classes, generator, num_seen=None):
        self.trainloader, self.testloader = trainloader, testloader
        # classes: names of the training classes (labels 0..num_seen-1), then of the
        # held-out ones, which only the test set has (labels num_seen..).
        self.classes = classes
        self.num_classes = len(classes) if num_seen is None else num_seen
        self.generator = generator  # the training shuffle's state, for checkpoints


def _load(cls, root, train, name):
    try:
        return cls(root, train=train, download=True)
    except Exception as e:  # no network, a proxy error, a corrupt file ...
        folder = os.path.join(os.path.abspath(root), cls.__name__, "raw")
        raise FileNotFoundError(
            f"cannot load {name} from {folder} and cannot download it ({type(e).__name__}); "
            f"put {', '.join(RAW_FILES)} (or their .gz) there, or pass --data-root "
            f"to the folder that holds {cls.__name__}/raw") from None


def create(name, batch_size, use_gpu, num_workers=4, root="./data", seed=1,
           rank=0, world_size=1, device=None, holdout=()):
    """Load dataset `name` (one of DATASETS) with torchvision, downloading it to `root`
    when missing. `num_workers` is accepted for compatibility with the popular script
    and unused: batches are drawn from memory. `batch_size` is the global batch; with
    `world_size` > 1 each rank gets its `rank`-th share. Raises FileNotFoundError with
    a message for people when the files are missing and cannot be downloaded, and
    ValueError when the batch cannot be split evenly over the processes.

    `holdout`: class indices left out of training (open-set evaluation). The training
    set then has only the other classes, relabelled 0..K-1 in their order; the test set
    keeps every image, the held-out classes relabelled K, K+1, ... (see `split_classes`).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    cls, mean, std, names = DATASETS[name]
    seen, unseen = split_classes(len(names), holdout)
    relabel = torch.empty(len(names), dtype=torch.long)
    relabel[seen + unseen] = torch.arange(len(names))
    device = device or ("cuda" if use_gpu else "cpu")
    generator = torch.Generator().manual_seed(seed)
    loaders = []
    for train in (True, False):
        ds = _load(cls, root, train, name)
        images, labels = ds.data, relabel[ds.targets]
        if train and unseen:
            keep = labels < len(seen)
            images, labels = images[keep], labels[keep]
        images, labels = images.to(device), labels.to(device)
        if train:
            _check_divisible(batch_size, world_size)
            # Equal shards of the last batch too: leave out its last few (< world_size)
            # images, a different few each epoch as the order is reshuffled.
            drop = len(labels) % batch_size % world_size
            loaders.append(TensorLoader(images, labels, batch_size, mean, std, shuffle=True,
                                        generator=generator, rank=rank, world_size=world_size,
                                        drop=drop))
        else:
            # Each rank tests one contiguous block, so that gathering the ranks' features
            # in rank order gives the test set in its own order (pairs index into it).
            lo, hi = _shard(0, len(labels), rank, world_size)
            loaders.append(TensorLoader(images[lo:hi], labels[lo:hi], batch_size, mean, std))
    classes = [names[c] for c in seen + unseen]
    return Dataset(loaders[0], loaders[1], classes, generator, num_seen=len(seen))


def split_classes(num_classes, holdout):
    """(seen, unseen): the class indices trained on, and the held-out ones, both sorted."""
    unseen = sorted(set(holdout))
    bad = [c for c in unseen if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"held-out classes must be in 0..{num_classes - 1}, got {bad}")
    seen = [c for c in range(num_classes) if c not in unseen]
    if len(seen) < 2:
        raise ValueError(f"holding out {unseen} leaves {len(seen)} class to train on; "
                         f"at least 2 are needed")
    return seen, unseen


def _check_divisible(batch_size, world_size):
    # Equal shards make the ranks' averaged gradients exactly the global batch's.
    if batch_size % world_size:
        raise ValueError(f"--batch-size {batch_size} is the global batch and must split "
                         f"evenly over {world_size} processes")
