"""MNIST, Fashion-MNIST, Omniglot and LFW, decoded once into tensors and served in batches.

A whole training set is at most 200 MB of uint8 (LFW's 3 x 72 x 72 face crops; the
glyphs' at most 47 MB), so it lives in memory (on the GPU when
training there) and batches are drawn by indexing: no per-sample decoding, no worker
processes, and data loading never limits speed. Shuffling uses a seeded
``torch.Generator`` whose state goes into checkpoints, so a resumed run sees the same
batches as one that was never interrupted.
"""
import functools
import hashlib
import io
import math
import multiprocessing
import os
import random
import re
import zipfile

import numpy as np
import torch
import torchvision

__all__ = ["create", "split_classes", "DATASETS", "NAMES", "TensorLoader", "load_one_shot",
           "load_lfw", "lfw_protocol", "LFW_SPLITS"]

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
# Omniglot (Lake et al., Science 2015) in torchvision's layout: 30 background alphabets
# (964 characters) to learn from, 20 evaluation alphabets (659 characters) never seen.
OMNIGLOT = "omniglot"
LFW = "lfw"
NAMES = sorted([*DATASETS, OMNIGLOT, LFW])
OMNIGLOT_SPLITS = ("images_background", "images_evaluation")
OMNIGLOT_DRAWERS, OMNIGLOT_TRAIN_DRAWERS = 20, 16  # drawers 17-20: the seen-class test
# Lake et al.'s 20 one-shot runs, from the Omniglot repository (not in torchvision).
ONE_SHOT_URL = ("https://github.com/brendenlake/omniglot/raw/master/python/"
                "one-shot-classification/all_runs.zip")
ONE_SHOT_MD5 = "e8996daecdf12afeeb4a53a179f06b19"
# Test batches: nothing is trained on them, so larger ones only save kernel launches (a GPU
# runs LeNet++ on 128 images in less time than it takes to launch the work).
TEST_BATCH = 512
CACHE_VERSION = 1  # of the decoded-image cache's format and preprocessing (_decode)


class TensorLoader:
    """Batches of normalised images (N, C, H, W) float32 and labels (N,) int64.

    Like a DataLoader with ``drop_last=False``: ``len()`` is the number of batches, and
    with ``shuffle=True`` each pass draws a new permutation from ``generator``. With
    ``world_size`` > 1 (torchrun), every rank draws the same global batches, from the
    same seeded generator, and yields its own contiguous part of each: the union over
    the ranks is exactly the batch a single process would get. ``drop`` samples at the
    end of each pass are left out (set by `create` so that the last batch, too, splits
    evenly over the ranks, and is not one image a rank).

    ``transform(images, first, total)``, when given, maps each uint8 batch to another
    before it is normalised (LFW's crops: `RandomCropFlip`, `center_crop`); this rank's
    images are the `first`-th on of a global batch of `total`.
    """

    def __init__(self, images, labels, batch_size, mean, std, shuffle=False, generator=None,
                 rank=0, world_size=1, drop=0, transform=None):
        self.images, self.labels = images, labels
        self.batch_size, self.mean, self.std = batch_size, mean, std
        self.shuffle, self.generator = shuffle, generator
        self.rank, self.world_size, self.drop = rank, world_size, drop
        self.transform = transform

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
            if self.transform is not None:  # knows where this rank's part of the batch lies
                images = self.transform(images, lo - start, min(start + self.batch_size, n) - start)
            yield normalise(images, self.mean, self.std), labels


def normalise(images, mean, std):
    """uint8 glyphs (N, 28, 28) -> (N, 1, 28, 28) float32, as ToTensor() + Normalize((mean,),
    (std,)) of the popular script; colour images (N, C, H, W) with per-channel `mean` and
    `std` (sequences of C floats) -> (N, C, H, W) float32."""
    if images.dim() == 3:
        return (images.unsqueeze(1).float() / 255 - mean) / std
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=images.device).view(-1, 1, 1)
                 for v in (mean, std))
    return (images.float() / 255 - mean) / std


class RandomCropFlip:
    """Training augmentation of a uint8 batch (N, C, H, W): each image's own random
    `size` x `size` crop, mirrored left-right with probability 1/2, drawn from `generator`
    (the loader's, whose state checkpoints keep: a resumed run sees the same crops). The
    draws are made for the whole global batch of `total` and this rank takes its part
    from `first` on, so that torchrun crops exactly as one process. One gather does both,
    on the batch's device."""

    def __init__(self, size, generator):
        self.size, self.generator = size, generator

    def __call__(self, images, first=0, total=None):
        n, _, h, w = images.shape
        total, g, part = total or n, self.generator, slice(first, first + n)
        top = torch.randint(h - self.size + 1, (total,), generator=g)[part]
        left = torch.randint(w - self.size + 1, (total,), generator=g)[part]
        flip = (torch.rand(total, generator=g) < 0.5)[part]
        steps = torch.arange(self.size)
        cols = torch.where(flip.unsqueeze(1), steps.flip(0), steps)  # mirrored: right to left
        rows = (top.unsqueeze(1) + steps).to(images.device)
        cols = (left.unsqueeze(1) + cols).to(images.device)
        idx = torch.arange(n, device=images.device)
        out = images[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, S, S, C)
        return out.permute(0, 3, 1, 2).contiguous()


class StrongAugment:
    """--augment strong, a training augmentation of a uint8 batch (N, C, H, W) for faces and
    re-identification: each image's random resized crop (a box of `scale` of its area and
    `ratio` of aspect, resampled bilinearly to `size` x `size`, as torchvision's
    RandomResizedCrop), mirrored with probability 1/2, colour jitter (brightness, contrast
    and saturation each scaled by a factor within 1 +- `jitter`) and random erasing (with
    probability `erase_p` a box of 2-33% of the image and aspect 0.3-3.3 set to the image's
    mean colour, as torchvision's RandomErasing). Returns float32 in [0, 255] for
    `normalise`. Draws as RandomCropFlip's: the whole global batch's from `generator`, this
    rank's part from `first` on."""

    def __init__(self, size, generator, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), jitter=0.2,
                 erase_p=0.5):
        self.size, self.generator = size, generator
        self.scale, self.ratio, self.jitter, self.erase_p = scale, ratio, jitter, erase_p

    def _boxes(self, total, scale, ratio):
        """(width, height, centre x, centre y) of `total` boxes as fractions of the image."""
        g = self.generator
        area = torch.empty(total).uniform_(*scale, generator=g)
        log_r = torch.empty(total).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
        w = (area * log_r.exp()).sqrt().clamp(max=1)
        h = (area / log_r.exp()).sqrt().clamp(max=1)
        cx = w / 2 + torch.rand(total, generator=g) * (1 - w)
        cy = h / 2 + torch.rand(total, generator=g) * (1 - h)
        return w, h, cx, cy

    def __call__(self, images, first=0, total=None):
        import torch.nn.functional as F
        n = images.shape[0]
        total, g, part = total or n, self.generator, slice(first, first + n)
        w, h, cx, cy = (t[part] for t in self._boxes(total, self.scale, self.ratio))
        flip = (torch.rand(total, generator=g) < 0.5)[part]
        factors = (1 + self.jitter * (2 * torch.rand(total, 3, generator=g) - 1))[part]
        erase = (torch.rand(total, generator=g) < self.erase_p)[part]
        ew, eh, ex, ey = (t[part] for t in self._boxes(total, (0.02, 0.33), (0.3, 3.3)))
        # The crop: output coordinates in [-1, 1] onto the box, mirrored by a negative x scale.
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.where(flip, -w, w)
        theta[:, 1, 1] = h
        theta[:, 0, 2], theta[:, 1, 2] = 2 * cx - 1, 2 * cy - 1
        dev = images.device
        grid = F.affine_grid(theta.to(dev), (n, images.shape[1], self.size, self.size),
                             align_corners=False)
        x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
        brightness, contrast, saturation = (f.to(dev).view(-1, 1, 1, 1) for f in factors.T)
        x = x * brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        grey = x.mean(dim=1, keepdim=True)  # the channels' mean: grey of the same brightness
        x = ((x - grey) * saturation + grey).clamp(0, 255)
        steps = (torch.arange(self.size, device=dev) + 0.5) / self.size
        inside = lambda c, half: ((steps - c.to(dev)[:, None]).abs() < half.to(dev)[:, None])  # noqa: E731
        box = inside(ey, eh / 2)[:, :, None] & inside(ex, ew / 2)[:, None, :]
        box &= erase.to(dev)[:, None, None]
        return torch.where(box[:, None], x.mean(dim=(2, 3), keepdim=True), x)


def center_crop(size):
    """The test-time crop: the middle `size` x `size` of each image of a batch."""
    def crop(images, first=0, total=None):
        top, left = (images.shape[2] - size) // 2, (images.shape[3] - size) // 2
        return images[:, :, top:top + size, left:left + size]
    return crop


def _shard(start, stop, rank, world_size):
    """This rank's contiguous part of [start, stop), as torch.tensor_split splits it."""
    q, r = divmod(stop - start, world_size)
    lo = start + rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


class Dataset:
    def __init__(self, trainloader, testloader, classes, generator, num_seen=None,
                 unseen_name="", files=None, one_shot=None, lfw=None):
        self.trainloader, self.testloader = trainloader, testloader
        # classes: names of the training classes (labels 0..num_seen-1), then of the
        # held-out ones, which only the test set has (labels num_seen..).
        self.classes = classes
        self.num_classes = len(classes) if num_seen is None else num_seen
        self.generator = generator  # the training shuffle's state, for checkpoints
        self.unseen_name = unseen_name  # how the log names the unseen classes
        self.files = files  # the test samples' source files (Omniglot), else None
        self.one_shot = one_shot  # Omniglot: Lake et al.'s 20 runs (see load_one_shot)
        # LFW: the protocol's pairs, as indices into the test set: pairs (P, 2) and same
        # (P,) to test, threshold_pairs and threshold_same to choose the threshold on (the
        # first num_threshold_images test images, of trained people); trained_people.
        self.lfw = lfw

    @property
    def open_set(self):
        """Whether the test set holds classes never trained on."""
        return len(self.classes) > self.num_classes


def _new_folders(folder):
    """The folders on the way to `folder` that do not exist yet, deepest first."""
    missing, folder = [], os.path.abspath(folder)
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _remove_empty(folders):
    """torchvision makes its folders before it downloads: after a failed download, remove
    those of `folders` (made by the attempt, deepest first) that are still empty, so that
    a wrong --data-root leaves nothing behind. A folder holding a file stays."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _why(e):
    """What went wrong in a failed download, in words for the error line: the file that
    could not be written ('permission denied: /data'), else the network's answer
    ('the download failed: Connection refused', 'HTTP Error 404: Not Found') as the
    message of torchvision's error (which names each mirror tried) holds it."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.strerror[:1].lower()}{e.strerror[1:]}: {e.filename}"
    text = f"{e} {getattr(e, 'reason', '')}"
    answer = re.search(r"\[Errno -?\d+\] ([^>\n\]]+)|(HTTP Error \d+: [^>\n]+)", text)
    return "the download failed" + (f": {(answer[1] or answer[2]).strip()}" if answer else "")


def _load(cls, root, train, name):
    folder = os.path.join(os.path.abspath(root), cls.__name__, "raw")
    new = _new_folders(folder)
    try:
        return cls(root, train=train, download=True)
    except Exception as e:  # no network, a proxy error, a corrupt file ...
        _remove_empty(new)
        broken = _check_idx_files(folder)
        if broken:
            raise ValueError(f"{name}: {broken}; delete it to have it downloaded again, "
                             f"or replace it") from None
        raise FileNotFoundError(
            f"cannot load {name} from {folder} and cannot download it ({_why(e)}); "
            f"put {', '.join(RAW_FILES)} (or their .gz) there, or pass --data-root "
            f"to the folder that holds {cls.__name__}/raw") from None


def _check_idx_files(folder):
    """What is wrong with the first damaged IDX file in `folder`, or '' when each one
    present has the size its header promises (magic 0x0801 labels, 0x0803 images)."""
    for name in RAW_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header = f.read(16)
        ndim = header[3] if len(header) >= 4 else 0
        if len(header) < 4 + 4 * ndim or header[:3] != b"\0\0\x08" or ndim not in (1, 3):
            return f"{path} is not an IDX file of unsigned bytes (its header is damaged)"
        dims = [int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
        expected = 4 + 4 * ndim + math.prod(dims)
        if size != expected:
            shape = " x ".join(f"{d:,}" for d in dims)
            return (f"{path} is {size:,} bytes, but its header ({shape}) needs {expected:,}: "
                    f"the file is {'truncated' if size < expected else 'too long'}")
    return ""


def create(name, batch_size, use_gpu, num_workers=4, root="./data", seed=1,
           rank=0, world_size=1, device=None, holdout=(), train_classes=None,
           lfw_split="view1", lfw_min_images=1, lfw_threshold_people=0, augment="crop-flip",
           input_size=None):
    """Load dataset `name` (one of DATASETS) with torchvision, downloading it to `root`
    when missing. `num_workers` is accepted for compatibility with the popular script
    and unused: batches are drawn from memory. `batch_size` is the global batch; with
    `world_size` > 1 each rank gets its `rank`-th share. Raises FileNotFoundError with
    a message for people when the files are missing and cannot be downloaded, and
    ValueError when the batch cannot be split evenly over the processes.

    `holdout`: class indices left out of training (open-set evaluation). The training
    set then has only the other classes, relabelled 0..K-1 in their order; the test set
    keeps every image, the held-out classes relabelled K, K+1, ... (see `split_classes`).

    Omniglot (`name` 'omniglot', see `load_omniglot`) has its own unseen classes, the
    evaluation alphabets; `train_classes` K trains on a random K of its 964 background
    characters, drawn with `seed`.

    LFW (`name` 'lfw', see `load_lfw`) trains and tests by its protocol split
    `lfw_split` (`lfw_threshold_people`: see load_lfw's `threshold_people`); training
    batches are cropped at random and mirrored (`RandomCropFlip`; `augment` 'strong':
    `StrongAugment`), test batches cropped in the middle, both to 64 x 64 (`input_size`).
    """
    if name not in NAMES:
        raise ValueError(f"dataset must be one of {NAMES}, got {name!r}")
    device = device or ("cuda" if use_gpu else "cpu")
    generator = torch.Generator().manual_seed(seed)
    _check_divisible(batch_size, world_size)
    transforms = (None, None)
    if name in (OMNIGLOT, LFW):
        if name == OMNIGLOT:
            o = load_omniglot(root, train_classes, seed)
        else:
            if holdout:
                raise ValueError("LFW's protocol files say who is trained on: no "
                                 "--holdout-classes")
            size = input_size or LFW_INPUT
            o = load_lfw(root, lfw_split, lfw_min_images, train_classes=train_classes,
                         seed=seed, threshold_people=lfw_threshold_people, input_size=size)
            augment_class = {"crop-flip": RandomCropFlip, "strong": StrongAugment}[augment]
            transforms = (augment_class(size, generator), center_crop(size))
        train, test = (o["train"], o["test"])
        mean, std = o["mean"], o["std"]
        classes, num_seen, extra = o["classes"], o["num_seen"], o["extra"]
    else:
        if train_classes is not None:
            raise ValueError(f"a subset of training classes is for {OMNIGLOT}, not {name}")
        cls, mean, std, names = DATASETS[name]
        seen, unseen = split_classes(len(names), holdout)
        relabel = torch.empty(len(names), dtype=torch.long)
        relabel[seen + unseen] = torch.arange(len(names))
        splits = []
        for is_train in (True, False):
            ds = _load(cls, root, is_train, name)
            images, labels = ds.data, relabel[ds.targets]
            if is_train and unseen:
                keep = labels < len(seen)
                images, labels = images[keep], labels[keep]
            splits.append((images, labels))
        train, test = splits
        classes, num_seen = [names[c] for c in seen + unseen], len(seen)
        extra = dict(unseen_name="unseen classes " + ",".join(map(str, unseen)))
    images, labels = (t.to(device) for t in train)
    # Equal shards of the last batch too: leave out its last few (< world_size) images, a
    # different few each epoch as the order is reshuffled. A last batch of one image a
    # process is left out whole: BatchNorm (the resnets' feature layer) cannot train on one
    # (LFW fold 10: 7,809 images, 61 batches of 128 and one of 1).
    rest = len(labels) % batch_size
    drop = rest if rest - rest % world_size == world_size else rest % world_size
    trainloader = TensorLoader(images, labels, batch_size, mean, std, shuffle=True,
                               generator=generator, rank=rank, world_size=world_size, drop=drop,
                               transform=transforms[0])
    # Each rank tests one contiguous block, so that gathering the ranks' features in rank
    # order gives the test set in its own order (pairs index into it).
    images, labels = (t.to(device) for t in test)
    lo, hi = _shard(0, len(labels), rank, world_size)
    testloader = TensorLoader(images[lo:hi], labels[lo:hi], max(batch_size, TEST_BATCH), mean,
                              std, transform=transforms[1])
    return Dataset(trainloader, testloader, classes, generator, num_seen=num_seen, **extra)


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


# ----------------------------------------------------------------------------- Omniglot

def _omniglot_folder(root, split):
    """root/omniglot-py/<split>, downloaded by torchvision when missing."""
    folder = os.path.join(os.path.abspath(root), "omniglot-py", split)
    if not os.path.isdir(folder):
        new = _new_folders(folder)
        try:
            torchvision.datasets.Omniglot(root, background=split == OMNIGLOT_SPLITS[0],
                                          download=True)
        except Exception as e:  # no network, a proxy error, a corrupt zip ...
            _remove_empty(new)
            raise FileNotFoundError(
                f"cannot load Omniglot from {folder} and cannot download it "
                f"({_why(e)}); extract {split}.zip there (torchvision's layout "
                f"{split}/<Alphabet>/characterNN/<id>_<drawer>.png), or pass --data-root "
                f"to the folder that holds omniglot-py/") from None
    return folder


def _omniglot_index(folder):
    """[(character 'Alphabet/characterNN', [its 20 PNGs' paths relative to the split's
    parent, in drawer order])], sorted; ValueError naming a character whose drawers are
    not exactly 1..20."""
    split = os.path.basename(folder)
    characters = []
    for alphabet in sorted(os.listdir(folder)):
        if not os.path.isdir(os.path.join(folder, alphabet)):
            continue
        for character in sorted(os.listdir(os.path.join(folder, alphabet))):
            where = os.path.join(folder, alphabet, character)
            if not os.path.isdir(where):
                continue
            drawers = {}
            for name in os.listdir(where):
                m = re.fullmatch(r"\d+_(\d+)\.png", name)
                if m:
                    drawers[int(m.group(1))] = f"{split}/{alphabet}/{character}/{name}"
            missing = sorted(set(range(1, OMNIGLOT_DRAWERS + 1)) - set(drawers))
            if missing or len(drawers) != OMNIGLOT_DRAWERS:
                raise ValueError(f"{where} must hold one <id>_<drawer>.png for each drawer "
                                 f"1-{OMNIGLOT_DRAWERS}; drawers missing: "
                                 f"{missing or 'none'}, found {sorted(drawers)}")
            characters.append((f"{alphabet}/{character}",
                               [drawers[d] for d in range(1, OMNIGLOT_DRAWERS + 1)]))
    if not characters:
        raise FileNotFoundError(f"{folder} holds no <Alphabet>/characterNN/ folders of PNGs")
    return characters


def _decode(source, name):
    """One Omniglot image (105 x 105, strokes black on white) as MNIST's: 28 x 28 uint8
    with bright strokes on black. Pillow's bilinear resize antialiases when it shrinks,
    as torchvision's Resize. `source` is a path or a file object; `name` names it in the
    ValueError for a missing, truncated or undecodable file."""
    try:
        from PIL import Image
        with Image.open(source) as im:
            small = im.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{name}: cannot decode this PNG ({e}); replace the file, or "
                         f"delete its folder to have it downloaded again") from None
    return 255 - np.asarray(small, dtype=np.uint8)


def cache_dir():
    """Where decoded Omniglot images are kept between runs: $CENTER_LOSS_CACHE (empty: no
    cache), else $XDG_CACHE_HOME/center_loss, else ~/.cache/center_loss. Never the data
    root, which may be read-only (and is shared by users here)."""
    if "CENTER_LOSS_CACHE" in os.environ:
        return os.environ["CENTER_LOSS_CACHE"] or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "center_loss")


def _cache_file(parent, kind="omniglot28"):
    # One file per data folder and kind of image (DECODERS); decoded pixels also depend
    # on Pillow's resize, so a new Pillow starts a new cache rather than mixing two
    # resamplers' images.
    import PIL
    key = hashlib.sha1(f"{os.path.realpath(parent)}|{PIL.__version__}|{CACHE_VERSION}".encode())
    folder = cache_dir()
    return os.path.join(folder, f"{kind}-{key.hexdigest()[:16]}.pt") if folder else None


def _read_cache(path):
    """{relative path: (size, mtime_ns, image)} from a cache file; {} when there is none or
    it cannot be read (a cache is only ever a shortcut)."""
    try:
        c = torch.load(path, weights_only=True)
        return {p: (s, m, i) for p, (s, m), i in zip(c["paths"], c["stats"].tolist(), c["images"])}
    except Exception:
        return {}


def _write_cache(path, entries):
    # Written to a temporary name, then renamed: a reader (another run starting) sees the
    # old file or the new one, never half of one.
    paths = sorted(entries)
    blob = {"paths": paths, "stats": torch.tensor([entries[p][:2] for p in paths]),
            "images": torch.stack([entries[p][2] for p in paths])}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache folder: the next load decodes again


def _stat(path):
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None  # _decode names the missing file


# Fewer files than this decode in this process: forking costs more than it saves.
DECODE_POOL_MIN_FILES = 2000


def _read_chunks(paths, size):
    """[(path, its bytes, or None where it cannot be read)] in chunks of `size`, read in
    this process one file after the other: cold, the disk's fastest order."""
    def read(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None  # _decode names the file
    for i in range(0, len(paths), size):
        yield [(p, read(p)) for p in paths[i:i + size]]


def _decode_chunk(chunk, kind="omniglot28"):
    decode = DECODERS[kind][0]
    return np.stack([decode(path if data is None else io.BytesIO(data), path)
                     for path, data in chunk])


def _decode_many(paths, kind="omniglot28"):
    """uint8 (N, 28, 28): the PNGs at `paths`, read here and decoded in one process per CPU
    (at most 8) on Linux. Pillow holds the GIL for most of a PNG, so threads do not help
    (two decoded the 32,460 images in 13.8 s against 5.5-6.0 s for one thread), while
    processes do (benchmarks/README.md, "An Omniglot evaluation"). The forked children only
    run Pillow and NumPy on bytes, as DataLoader's forked workers would; elsewhere (macOS,
    whose system libraries are not fork-safe, and Windows) all is decoded here."""
    linux = hasattr(os, "sched_getaffinity")
    workers = min(8, len(os.sched_getaffinity(0))) if linux else 1
    # A few hundred files a task; at least four tasks a worker, so that they end together.
    chunks = _read_chunks(paths, max(1, min(256, math.ceil(len(paths) / (4 * workers)))))
    decode = functools.partial(_decode_chunk, kind=kind)
    if workers < 2 or len(paths) < DECODE_POOL_MIN_FILES:
        decoded = list(map(decode, chunks))
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            decoded = list(pool.imap(decode, chunks))  # re-raises the decoder's error
    return np.concatenate(decoded) if decoded else np.empty((0, *DECODERS[kind][1]), np.uint8)


def _decode_all(parent, paths, kind="omniglot28"):
    """The images of `paths` (relative to `parent`), uint8 (N, *shape) as DECODERS[kind]
    makes them (Omniglot's (N, 28, 28) by default): from the cache
    (`cache_dir`) where a file's size and modification time are those it was decoded
    with, else decoded, and the cache updated. Cold, reading 32,460 small files is slow
    on its own; one cache file is not (benchmarks/README.md, "An Omniglot evaluation")."""
    cache = _cache_file(parent, kind)
    entries = _read_cache(cache) if cache else {}
    misses = []
    for p in paths:
        stat = _stat(os.path.join(parent, p))
        hit = entries.get(p)
        if hit is None or stat is None or hit[:2] != stat:
            misses.append((p, stat))
    # _decode_many names a missing file
    decoded = _decode_many([os.path.join(parent, p) for p, _ in misses], kind)
    for (p, stat), image in zip(misses, torch.from_numpy(decoded)):
        entries[p] = (*stat, image)
    images = [entries[p][2] for p in paths]
    if misses and cache:
        _write_cache(cache, entries)
    if not images:
        return torch.empty(0, *DECODERS[kind][1], dtype=torch.uint8)
    return torch.stack(images)


def draw_classes(classes, k, seed, what):
    """`k` of the list `classes` drawn at random with `seed`, in their order (--train-classes;
    all of them when k is None). `what` names the classes in the error."""
    if k is None:
        return classes
    if not isinstance(k, int) or not 2 <= k <= len(classes):
        raise ValueError(f"--train-classes must be an integer from 2 to {len(classes)} "
                         f"({what}), got {k!r}")
    return _draw(classes, k, seed)


def _draw(items, k, seed):
    """`k` of the list `items` drawn at random with `seed`, in their order."""
    g = torch.Generator().manual_seed(seed)
    return [items[j] for j in sorted(torch.randperm(len(items), generator=g)[:k].tolist())]


def load_omniglot(root, train_classes=None, seed=1):
    """Omniglot's splits as uint8 (N, 28, 28) images and int64 labels:

    - train: the background characters' drawers 1-16 (964 x 16 = 15,424 images), or only
      those of `train_classes` K background characters drawn at random with `seed`;
    - test: the same characters' drawers 17-20 (seen classes, labels 0..K-1), then all
      13,180 images of the 659 evaluation characters (unseen classes, labels K..K+658).

    Returns a dict: train and test (images, labels), the training images' mean and std,
    classes (names 'Alphabet/characterNN': the trained ones, then the unseen ones),
    num_seen (K), and extra (Dataset's unseen_name, files: each test image's path such
    as 'images_evaluation/Angelic/character01/0965_01.png', and one_shot).
    """
    background, evaluation = (_omniglot_index(_omniglot_folder(root, s)) for s in OMNIGLOT_SPLITS)
    seen = draw_classes(background, train_classes, seed, "Omniglot's background characters")
    parent = os.path.join(os.path.abspath(root), "omniglot-py")
    k = OMNIGLOT_TRAIN_DRAWERS

    def split(chars, drawers, first_label):
        paths = [p for _, files in chars for p in files[drawers]]
        per = len(range(OMNIGLOT_DRAWERS)[drawers])
        labels = torch.arange(first_label, first_label + len(chars)).repeat_interleave(per)
        return paths, labels

    train_paths, train_labels = split(seen, slice(0, k), 0)
    seen_paths, seen_labels = split(seen, slice(k, None), 0)
    unseen_paths, unseen_labels = split(evaluation, slice(None), len(seen))
    images = _decode_all(parent, train_paths + seen_paths + unseen_paths)
    train_images, test_images = images[:len(train_paths)], images[len(train_paths):]
    pixels = train_images.double() / 255
    test_files = seen_paths + unseen_paths
    return {"train": (train_images, train_labels),
            "test": (test_images, torch.cat([seen_labels, unseen_labels])),
            "mean": pixels.mean().item(), "std": pixels.std().item(),
            "classes": [name for name, _ in seen + evaluation], "num_seen": len(seen),
            "extra": dict(unseen_name=f"unseen classes: {len(evaluation)} evaluation characters",
                          files=test_files, one_shot=load_one_shot(root))}


def one_shot_path(root):
    """root/omniglot-one-shot/all_runs.zip, downloaded (and its MD5 checked) when missing."""
    folder = os.path.join(os.path.abspath(root), "omniglot-one-shot")
    path = os.path.join(folder, "all_runs.zip")
    if not os.path.isfile(path):
        new = _new_folders(folder)
        try:
            torchvision.datasets.utils.download_url(ONE_SHOT_URL, folder, "all_runs.zip",
                                                    md5=ONE_SHOT_MD5)
        except Exception as e:
            _remove_empty(new)
            raise FileNotFoundError(
                f"cannot find Lake et al.'s one-shot runs at {path} and cannot download them "
                f"({_why(e)}); put all_runs.zip of the Omniglot repository "
                f"(python/one-shot-classification/, MD5 {ONE_SHOT_MD5}) there") from None
    return path


def load_one_shot(root):
    """Lake et al.'s one-shot task (Science 2015): 20 runs of 20-way, 1-shot, within-
    alphabet classification, read from all_runs.zip as shipped.

    Each run `runNN/` holds 20 training images (`training/classNN.png`, one per
    character), 20 test images (`test/itemNN.png`) and `class_labels.txt`, a line per test
    image: `runNN/test/itemNN.png runNN/training/classNN.png`, its character's training
    image. The answer is read from that file, never from the order of the names.

    Returns a dict: support (R, 20, 28, 28) and queries (R, 20, 28, 28) uint8 images
    (decoded as the Omniglot images), answers (R, 20) int64 (the index of each query's
    training image in support), and the members' names (support_files, query_files).
    """
    path = one_shot_path(root)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable zip ({e}); delete it to have it "
                         f"downloaded again") from None
    with archive:
        names = set(archive.namelist())
        runs = sorted({n.split("/")[0] for n in names if re.fullmatch(r"run\d+/.*", n)})
        if not runs:
            raise ValueError(f"{path} holds no runNN/ folders: not Lake et al.'s all_runs.zip")
        support, queries, answers, support_files, query_files = [], [], [], [], []
        for run in runs:
            labels_file = f"{run}/class_labels.txt"
            if labels_file not in names:
                raise ValueError(f"{path} has no {labels_file}: the answers of {run} are "
                                 f"missing, so it is not a complete all_runs.zip")
            train = sorted(n for n in names
                           if re.fullmatch(re.escape(run) + r"/training/class\d+\.png", n))
            pairs = [line.split() for line in
                     archive.read(labels_file).decode().splitlines() if line.strip()]
            bad = [p for p in pairs if len(p) != 2 or p[0] not in names or p[1] not in train]
            if bad or not pairs:
                raise ValueError(f"{path}: {labels_file} must have a line 'test image "
                                 f"training image' per test image, both in the zip; "
                                 f"cannot read {' '.join(bad[0]) if bad else 'an empty file'!r}")
            read = lambda n: _decode(io.BytesIO(archive.read(n)), f"{path}:{n}")  # noqa: E731
            support.append(np.stack([read(n) for n in train]))
            queries.append(np.stack([read(q) for q, _ in pairs]))
            answers.append([train.index(a) for _, a in pairs])
            support_files.append(train)
            query_files.append([q for q, _ in pairs])
    sizes = {(len(s), len(q)) for s, q in zip(support, queries)}
    if len(sizes) != 1:
        raise ValueError(f"{path}: runs differ in their numbers of training and test "
                         f"images ({sorted(sizes)})")
    return {"support": torch.from_numpy(np.stack(support)),
            "queries": torch.from_numpy(np.stack(queries)),
            "answers": torch.tensor(answers), "support_files": support_files,
            "query_files": query_files}


# ----------------------------------------------------------------------------- LFW

# Labeled Faces in the Wild (Huang et al. 2007), deep-funneled (Huang et al., NIPS 2012), in
# torchvision's layout: root/lfw-py/lfw-deepfunneled/<Name>/<Name>_NNNN.jpg and the protocol
# files beside it, checked by the MD5s torchvision's datasets/lfw.py lists.
LFW_MD5 = {"pairs.txt": "9f1ba174e4e1c508ff7cdf10ac338a7d",
           "pairsDevTest.txt": "5132f7440eb68cf58910c8a45a2ac10b",
           "pairsDevTrain.txt": "4f27cbf15b2da4a85c1907eb4181ad21",
           "people.txt": "450f0863dd89e85e73936a6d71a3474b",
           "peopleDevTest.txt": "e4bf5be0a43b5dcd9dc5ccfcb8fb19c5",
           "peopleDevTrain.txt": "54eaac34beb6d042ed3a7d883e247a21"}
LFW_FOLDS = 10
# view1: train on peopleDevTrain, test pairsDevTest (for choosing settings); foldK: View 2,
# train on the people of the other nine sets of people.txt, test fold K of pairs.txt.
LFW_SPLITS = ["view1"] + [f"fold{k}" for k in range(1, LFW_FOLDS + 1)]
# The face crop (docs/lfw.md). The deep-funneled faces are aligned: in the mean of 1,000
# images the eyes sit at y ~105 of 250, the mouth at ~155, hairline ~60, chin ~180, centred
# on x = 125. The network sees the middle 128 x 128 px at half resolution (64 x 64), the
# face from hairline to chin; the cache keeps the middle 144 px (72 x 72), so that training
# crops 64 x 64 at random, up to 8 px of the original off centre.
LFW_DECODED = 125  # JPEG decoded at half scale: DCT scaling, 2x faster than full size
LFW_STORED, LFW_INPUT = 72, 64
LFW_URL = "https://vis-www.cs.umass.edu/lfw/"


def _decode_face(source, name, stored=LFW_STORED):
    """One deep-funneled LFW image (250 x 250 JPEG) as uint8 (3, stored, stored), the middle
    144 x 144 px of the original. At 72 (64 x 64 inputs): decoded at half scale and cropped
    to its middle 72 x 72; a 72 x 72 image is such a crop already (a packed copy of LFW)
    and is taken as it is. Larger (--input-size 96, 112): decoded at full size, its middle
    144 x 144 px resized to `stored` (Pillow's bilinear, which filters as it shrinks).
    `name` names the file in the ValueError for a truncated or undecodable one."""
    try:
        from PIL import Image
        with Image.open(source) as im:
            if stored == LFW_STORED and im.size == (LFW_STORED, LFW_STORED):
                return np.ascontiguousarray(np.asarray(im.convert("RGB"), np.uint8)
                                            .transpose(2, 0, 1))
            if stored != LFW_STORED:
                im = im.convert("RGB")
                lo = (im.size[0] - 2 * LFW_STORED) // 2
                im = im.crop((lo, lo, lo + 2 * LFW_STORED, lo + 2 * LFW_STORED))
                face = np.asarray(im.resize((stored, stored), Image.Resampling.BILINEAR),
                                  np.uint8)
                return np.ascontiguousarray(face.transpose(2, 0, 1))
            im.draft("RGB", (LFW_DECODED, LFW_DECODED))  # JPEG only: decodes at 1/2 scale
            im = im.convert("RGB")
            if im.size != (LFW_DECODED, LFW_DECODED):
                im = im.resize((LFW_DECODED, LFW_DECODED), Image.Resampling.BILINEAR)
            lo = (LFW_DECODED - LFW_STORED) // 2
            face = np.asarray(im.crop((lo, lo, lo + LFW_STORED, lo + LFW_STORED)), np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{name}: cannot decode this JPEG ({e}); replace the file with "
                         f"the one of the LFW download") from None
    return np.ascontiguousarray(face.transpose(2, 0, 1))


# kind of cached image: (decoder, shape of one image); the decoders are looked up when
# called, so that a test can stand in for one
DECODERS = {"omniglot28": (lambda source, name: _decode(source, name), (28, 28)),
            "lfw72": (lambda source, name: _decode_face(source, name),
                      (3, LFW_STORED, LFW_STORED))}
# --input-size: the same 144 px of face at a higher resolution; stored 9/8 of the input, as
# 72 for 64, so that training crops move by up to 1/16 of the face.
LFW_INPUT_SIZES = (64, 96, 112)
for _size in LFW_INPUT_SIZES[1:]:
    _stored = _size * 9 // 8
    DECODERS[f"lfw{_stored}"] = (functools.partial(
        lambda source, name, stored: _decode_face(source, name, stored), stored=_stored),
        (3, _stored, _stored))


def _lfw_folder(root):
    folder = os.path.join(os.path.abspath(root), "lfw-py")
    images = os.path.join(folder, "lfw-deepfunneled")
    if not os.path.isdir(images):
        raise FileNotFoundError(
            f"no LFW images in {images}: torchvision no longer downloads LFW; download the "
            f"deep-funneled images (lfw-deepfunneled.tgz) and the protocol files (pairs.txt, "
            f"people.txt, pairsDevTrain.txt, pairsDevTest.txt, peopleDevTrain.txt, "
            f"peopleDevTest.txt) from {LFW_URL}, extract them into {folder}, or pass "
            f"--data-root to the folder that holds lfw-py/")
    return folder


def _lfw_lines(folder, name, md5s):
    """The lines of protocol file `name`, its MD5 checked against md5s[name] (if listed)."""
    path = os.path.join(folder, name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise FileNotFoundError(f"LFW's protocol file {path} is missing: download {name} "
                                f"from {LFW_URL} into {folder}") from None
    want = md5s.get(name)
    if want is not None and hashlib.md5(data).hexdigest() != want:
        raise ValueError(f"{path} has MD5 {hashlib.md5(data).hexdigest()}, not {want} "
                         f"(torchvision's): it is damaged or another version; download "
                         f"{name} again from {LFW_URL}")
    return data.decode("utf-8", errors="replace").splitlines()


def _ints(fields, path, number):
    try:
        return [int(f) for f in fields]
    except ValueError:
        raise ValueError(f"{path}, line {number}: expected numbers, got "
                         f"{' '.join(fields)!r}") from None


def _parse_people(lines, path):
    """People files as [[(name, images)] per set]. peopleDevTrain/Test.txt: a count, then
    that many 'Name<TAB>N' lines (one set); people.txt: the number of sets, then for each
    its count and lines."""
    rows = [(i + 1, line.split()) for i, line in enumerate(lines) if line.strip()]
    if not rows:
        raise ValueError(f"{path} is empty")
    if len(rows[0][1]) != 1:
        raise ValueError(f"{path}, line 1: expected a count, got {' '.join(rows[0][1])!r}")
    first = _ints(rows[0][1], path, 1)[0]
    # A Dev file's first line counts people; people.txt's counts sets, each led by a count.
    single = len(rows) == first + 1
    sets, at = [], 1
    for _ in range(1 if single else first):
        if single:
            size = first
        else:
            if at >= len(rows) or len(rows[at][1]) != 1:
                raise ValueError(f"{path}, line {rows[min(at, len(rows) - 1)][0]}: expected "
                                 f"the number of people of set {len(sets) + 1}")
            size = _ints(rows[at][1], path, rows[at][0])[0]
            at += 1
        people = []
        for number, fields in rows[at:at + size]:
            if len(fields) != 2:
                raise ValueError(f"{path}, line {number}: expected 'Name<TAB>images', got "
                                 f"{' '.join(fields)!r}")
            people.append((fields[0], _ints(fields[1:], path, number)[0]))
        if len(people) != size:
            raise ValueError(f"{path}: set {len(sets) + 1} promises {size} people, "
                             f"the file ends after {len(people)}")
        sets.append(people)
        at += size
    if at != len(rows):
        raise ValueError(f"{path}, line {rows[at][0]}: more lines than its counts promise")
    return sets


def _parse_pairs(lines, path):
    """Pairs files as [[((name, number), (name, number), same)] per fold]. The first line
    is 'N' (pairsDevTrain/Test.txt: one fold) or 'folds<TAB>N' (pairs.txt); each fold has N
    matched lines 'Name<TAB>i<TAB>j', then N mismatched lines 'Name<TAB>i<TAB>Other<TAB>j'."""
    rows = [(i + 1, line.split()) for i, line in enumerate(lines) if line.strip()]
    if not rows or len(rows[0][1]) not in (1, 2):
        raise ValueError(f"{path}, line 1: expected 'pairs' or 'folds pairs'")
    head = _ints(rows[0][1], path, 1)
    folds, n = (1, head[0]) if len(head) == 1 else head
    if len(rows) != 1 + folds * 2 * n:
        raise ValueError(f"{path}: its first line promises {folds} x {2 * n} pairs, it has "
                         f"{len(rows) - 1} lines")
    out = []
    for k in range(folds):
        fold = []
        for j, (number, f) in enumerate(rows[1 + 2 * n * k:1 + 2 * n * (k + 1)]):
            matched = j < n
            if len(f) != (3 if matched else 4):
                kind, form = (("matched", "Name i j") if matched
                              else ("mismatched", "Name i Other j"))
                raise ValueError(f"{path}, line {number}: a {kind} pair must be '{form}', "
                                 f"got {' '.join(f)!r}")
            if matched:
                i, jj = _ints(f[1:], path, number)
                fold.append(((f[0], i), (f[0], jj), True))
            else:
                i, jj = _ints([f[1], f[3]], path, number)
                fold.append(((f[0], i), (f[2], jj), False))
        out.append(fold)
    return out


def lfw_protocol(root, split, md5s=None):
    """Who trains and what is tested in LFW split `split` (one of LFW_SPLITS), by the
    protocol files (Huang & Learned-Miller, UM-CS-2014-003):

    - view1: train on peopleDevTrain.txt, test the pairs of pairsDevTest.txt, whose
      people are those of peopleDevTest.txt; the verification threshold is chosen on
      pairsDevTrain.txt (trained people only).
    - foldK: train on the people of the nine sets of people.txt other than set K; test
      fold K of pairs.txt (people of set K); the threshold is chosen on the other nine
      folds of pairs.txt (trained people only).

    Returns a dict: train_people and test_people ([(name, images)]), test_pairs and
    threshold_pairs ([((name, i), (name, j), same)]). ValueError for a split out of
    range, a file whose MD5 differs from md5s ({file: MD5}; default LFW_MD5, {} checks
    nothing), a malformed line, a pair
    of an image its person does not have, or a test person among the training people.
    """
    if split not in LFW_SPLITS:
        raise ValueError(f"--lfw-split must be view1 or fold1 ... fold{LFW_FOLDS}, got {split!r}")
    folder = _lfw_folder(root)
    md5s = LFW_MD5 if md5s is None else md5s

    def read(name, parse):
        return parse(_lfw_lines(folder, name, md5s), os.path.join(folder, name))

    if split == "view1":
        train = read("peopleDevTrain.txt", _parse_people)[0]
        test = read("peopleDevTest.txt", _parse_people)[0]
        test_pairs = read("pairsDevTest.txt", _parse_pairs)[0]
        threshold_pairs = read("pairsDevTrain.txt", _parse_pairs)[0]
    else:
        k = int(split[4:]) - 1
        sets, folds = read("people.txt", _parse_people), read("pairs.txt", _parse_pairs)
        if len(sets) != LFW_FOLDS or len(folds) != LFW_FOLDS:
            raise ValueError(f"people.txt and pairs.txt must hold {LFW_FOLDS} sets and "
                             f"folds, got {len(sets)} and {len(folds)}")
        train = [p for j, s in enumerate(sets) if j != k for p in s]
        test, test_pairs = sets[k], folds[k]
        threshold_pairs = [p for j, f in enumerate(folds) if j != k for p in f]
    trained = dict(train)
    both = sorted(set(trained) & {name for name, _ in test})
    if both:
        raise ValueError(f"LFW {split}: {len(both)} test people are among the training "
                         f"people ({', '.join(both[:3])}{' ...' if len(both) > 3 else ''}): "
                         f"the protocol files contradict each other")
    for pairs, people, what in ((test_pairs, dict(test), "test"),
                                (threshold_pairs, trained, "training")):
        for a, b, _ in pairs:
            for name, number in (a, b):
                if not 1 <= number <= people.get(name, 0):
                    raise ValueError(f"LFW {split}: a {what} pair names {name}_{number:04d}, "
                                     f"not an image of the {what} people")
    return {"train_people": train, "test_people": test, "test_pairs": test_pairs,
            "threshold_pairs": threshold_pairs}


# The threshold's pairs among held-out people: each person's first few images only, so
# that the few people with dozens of images (George W Bush: 530) do not make the matched
# pairs theirs.
THRESHOLD_IMAGES_PER_PERSON = 5


def hold_out_people(classes, count, seed, split):
    """`count` of `classes` ([(name, images)]) with two or more images, drawn with `seed`
    (--lfw-threshold-people): people never trained on, whose pairs choose the threshold."""
    if not count:
        return []
    able = [person for person in classes if person[1] >= 2]
    if not isinstance(count, int) or not 2 <= count <= len(able) - 2:
        raise ValueError(f"--lfw-threshold-people must be 0 or an integer from 2 to "
                         f"{len(able) - 2} (LFW {split}'s training people with two or more "
                         f"images, less the two that training needs), got {count!r}")
    return _draw(able, count, seed)


def threshold_people_pairs(people, seed, per_person=THRESHOLD_IMAGES_PER_PERSON):
    """Verification pairs among `people` ([(name, images)], held out of training): every
    pair of each person's first `per_person` images (matched), and as many pairs of two
    different people's images, drawn with `seed` (mismatched, none twice; fewer only where
    the people have fewer), so that the threshold is chosen on half matched pairs as the
    protocol's are.
    Returns [((name, i), (name, j), same)]."""
    firsts = [(n, range(1, min(c, per_person) + 1)) for n, c in people]
    matched = [((n, i), (n, j), True) for n, images in firsts for i in images for j in images
               if i < j]
    counts = [c for _, c in people]
    possible = (sum(counts) ** 2 - sum(c * c for c in counts)) // 2
    rng = random.Random(seed)
    mismatched = set()
    while len(mismatched) < min(len(matched), possible):
        (a, ca), (b, cb) = rng.sample(people, 2)
        pair = tuple(sorted([(a, rng.randint(1, ca)), (b, rng.randint(1, cb))]))
        mismatched.add(pair)
    return matched + [(a, b, False) for a, b in sorted(mismatched)]


def _lfw_file(name, number):
    return f"{name}/{name}_{number:04d}.jpg"


def _channel_stats(images):
    """Per-channel mean and standard deviation (n - 1) of uint8 images (N, C, H, W) in
    [0, 1], exact: from each channel's histogram of the 256 values, which is faster than
    converting 150 M pixels to float64 (and needs no 1.2 GB for them)."""
    mean, std = [], []
    values = torch.arange(256, dtype=torch.float64) / 255
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        n = counts.sum()
        m = (counts * values).sum() / n
        var = (counts * (values - m) ** 2).sum() / (n - 1)
        mean.append(m.item())
        std.append(var.sqrt().item())
    return mean, std


def load_lfw(root, split="view1", min_images=1, md5s=None, train_classes=None, seed=1,
             threshold_people=0, input_size=LFW_INPUT):
    """LFW split `split` (see `lfw_protocol`) as uint8 (N, 3, 72, 72) face crops (9/8 of
    `input_size` a side: 108 x 108 for 96, 126 x 126 for 112):

    - train: the images of the training people with at least `min_images` images, the
      softmax classes (labels 0..K-1, people in the protocol file's order), or only
      `train_classes` K of them drawn at random with `seed` (to measure what fewer
      people cost);
    - test: first the images of the threshold pairs (trained people: their class label,
      or a label from K + T on for a person who is no class), then every
      image of the T test people (labels K..K+T-1).
    - with `threshold_people` H > 0, H of the training people with two or more images
      (drawn with `seed`) are not trained on, and the threshold pairs are pairs of their
      images (`threshold_people_pairs`) instead of the protocol's pairs of trained people,
      whose images stay first in the test set (the closed-set accuracy is theirs).

    Returns a dict: train, test (images, labels), mean and std (per channel, of the
    training images), classes (the K trained people, then the T test people), num_seen
    (K), and extra (Dataset's unseen_name, files: each test image's 'Name_NNNN', lfw: the
    protocol's pairs as indices into the test set, see `Dataset.lfw`).
    """
    if not isinstance(min_images, int) or min_images < 1:
        raise ValueError(f"--lfw-min-images must be a positive integer, got {min_images!r}")
    p = lfw_protocol(root, split, md5s)
    classes = [(n, c) for n, c in p["train_people"] if c >= min_images]
    held_out = hold_out_people(classes, threshold_people, seed, split)
    # The protocol's threshold pairs' images stay in the test set whoever chooses the
    # threshold: they are the trained people's images the closed-set accuracy is of.
    imaged_pairs = p["threshold_pairs"]
    if held_out:
        classes = [person for person in classes if person not in held_out]
        p["threshold_pairs"] = threshold_people_pairs(held_out, seed)
        imaged_pairs = imaged_pairs + p["threshold_pairs"]
    if len(classes) < 2:
        raise ValueError(f"LFW {split}: {len(classes)} training people have {min_images} "
                         f"or more images; at least 2 are needed")
    classes = draw_classes(classes, train_classes, seed,
                           f"LFW {split}'s people with {min_images} or more images")
    label = {n: j for j, (n, _) in enumerate(classes)}
    k, t = len(classes), len(p["test_people"])
    label.update({n: k + j for j, (n, _) in enumerate(p["test_people"])})
    for n, _ in p["train_people"]:  # threshold-pair people who are no class
        label.setdefault(n, len(label))
    train_files = [(n, i) for n, c in classes for i in range(1, c + 1)]
    threshold_files = sorted({im for a, b, _ in imaged_pairs for im in (a, b)})
    test_files = [(n, i) for n, c in p["test_people"] for i in range(1, c + 1)]
    files = threshold_files + test_files
    where = {f: j for j, f in enumerate(files)}

    def indices(pairs):
        return (torch.tensor([[where[a], where[b]] for a, b, _ in pairs]).view(-1, 2),
                torch.tensor([same for _, _, same in pairs], dtype=torch.bool))

    parent = os.path.join(_lfw_folder(root), "lfw-deepfunneled")
    if input_size not in LFW_INPUT_SIZES:
        raise ValueError(f"--input-size must be one of {LFW_INPUT_SIZES}, got {input_size!r}")
    images = _decode_all(parent, [_lfw_file(*f) for f in train_files + files],
                         f"lfw{input_size * 9 // 8}")
    train_images, test_images = images[:len(train_files)], images[len(train_files):]
    mean, std = _channel_stats(train_images)
    pairs, same = indices(p["test_pairs"])
    threshold_pairs, threshold_same = indices(p["threshold_pairs"])
    lfw = {"split": split, "pairs": pairs, "same": same, "threshold_pairs": threshold_pairs,
           "threshold_same": threshold_same, "num_threshold_images": len(threshold_files),
           "trained_people": [n for n, _ in classes],
           "threshold_people": [n for n, _ in held_out],
           "people_not_classes": [n for n, _ in p["train_people"] if label[n] >= k + t]}
    return {"train": (train_images, torch.tensor([label[n] for n, _ in train_files])),
            "test": (test_images, torch.tensor([label[n] for n, _ in files])),
            "mean": mean, "std": std,
            "classes": [n for n, _ in classes] + [n for n, _ in p["test_people"]],
            "num_seen": k,
            "extra": dict(unseen_name=f"LFW {split} test people ({t})",
                          files=[f"{n}_{i:04d}" for n, i in files], lfw=lfw)}
