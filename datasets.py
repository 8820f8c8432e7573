"""MNIST, Fashion-MNIST and Omniglot, decoded once into tensors and served in batches.

A whole training set is at most 47 MB of uint8, so it lives in memory (on the GPU when
training there) and batches are drawn by indexing: no per-sample decoding, no worker
processes, and data loading never limits speed. Shuffling uses a seeded
``torch.Generator`` whose state goes into checkpoints, so a resumed run sees the same
batches as one that was never interrupted.
"""
import hashlib
import io
import math
import multiprocessing
import os
import re
import zipfile

import numpy as np
import torch
import torchvision

__all__ = ["create", "split_classes", "DATASETS", "NAMES", "TensorLoader", "load_one_shot"]

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
NAMES = sorted([*DATASETS, OMNIGLOT])
OMNIGLOT_SPLITS = ("images_background", "images_evaluation")
OMNIGLOT_DRAWERS, OMNIGLOT_TRAIN_DRAWERS = 20, 16  # drawers 17-20: the seen-class test
# Lake et al.'s 20 one-shot runs, from the Omniglot repository (not in torchvision).
ONE_SHOT_URL = ("https://github.com/brendenlake/omniglot/raw/master/python/"
                "one-shot-classification/all_runs.zip")
ONE_SHOT_MD5 = "e8996daecdf12afeeb4a53a179f06b19"
CACHE_VERSION = 1  # of the decoded-image cache's format and preprocessing (_decode)


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
            yield normalise(images, self.mean, self.std), labels


def normalise(images, mean, std):
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32, as ToTensor() + Normalize((mean,),
    (std,)) of the popular script."""
    return (images.unsqueeze(1).float() / 255 - mean) / std


def _shard(start, stop, rank, world_size):
    """This rank's contiguous part of [start, stop), as torch.tensor_split splits it."""
    q, r = divmod(stop - start, world_size)
    lo = start + rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


class Dataset:
    def __init__(self, trainloader, testloader, classes, generator, num_seen=None,
                 unseen_name="", files=None, one_shot=None):
        self.trainloader, self.testloader = trainloader, testloader
        # classes: names of the training classes (labels 0..num_seen-1), then of the
        # held-out ones, which only the test set has (labels num_seen..).
        self.classes = classes
        self.num_classes = len(classes) if num_seen is None else num_seen
        self.generator = generator  # the training shuffle's state, for checkpoints
        self.unseen_name = unseen_name  # how the log names the unseen classes
        self.files = files  # the test samples' source files (Omniglot), else None
        self.one_shot = one_shot  # Omniglot: Lake et al.'s 20 runs (see load_one_shot)

    @property
    def open_set(self):
        """Whether the test set holds classes never trained on."""
        return len(self.classes) > self.num_classes


def _load(cls, root, train, name):
    folder = os.path.join(os.path.abspath(root), cls.__name__, "raw")
    try:
        return cls(root, train=train, download=True)
    except Exception as e:  # no network, a proxy error, a corrupt file ...
        broken = _check_idx_files(folder)
        if broken:
            raise ValueError(f"{name}: {broken}; delete it to have it downloaded again, "
                             f"or replace it") from None
        raise FileNotFoundError(
            f"cannot load {name} from {folder} and cannot download it ({type(e).__name__}); "
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
           rank=0, world_size=1, device=None, holdout=(), train_classes=None):
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
    """
    if name not in NAMES:
        raise ValueError(f"dataset must be one of {NAMES}, got {name!r}")
    device = device or ("cuda" if use_gpu else "cpu")
    generator = torch.Generator().manual_seed(seed)
    _check_divisible(batch_size, world_size)
    if name == OMNIGLOT:
        o = load_omniglot(root, train_classes, seed)
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
    # different few each epoch as the order is reshuffled.
    drop = len(labels) % batch_size % world_size
    trainloader = TensorLoader(images, labels, batch_size, mean, std, shuffle=True,
                               generator=generator, rank=rank, world_size=world_size, drop=drop)
    # Each rank tests one contiguous block, so that gathering the ranks' features in rank
    # order gives the test set in its own order (pairs index into it).
    images, labels = (t.to(device) for t in test)
    lo, hi = _shard(0, len(labels), rank, world_size)
    testloader = TensorLoader(images[lo:hi], labels[lo:hi], batch_size, mean, std)
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
        try:
            torchvision.datasets.Omniglot(root, background=split == OMNIGLOT_SPLITS[0],
                                          download=True)
        except Exception as e:  # no network, a proxy error, a corrupt zip ...
            raise FileNotFoundError(
                f"cannot load Omniglot from {folder} and cannot download it "
                f"({type(e).__name__}); extract {split}.zip there (torchvision's layout "
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


def _cache_file(parent):
    # One file per data folder; decoded pixels also depend on Pillow's resize, so a new
    # Pillow starts a new cache rather than mixing two resamplers' images.
    import PIL
    key = hashlib.sha1(f"{os.path.realpath(parent)}|{PIL.__version__}|{CACHE_VERSION}".encode())
    folder = cache_dir()
    return os.path.join(folder, f"omniglot28-{key.hexdigest()[:16]}.pt") if folder else None


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


def _decode_chunk(chunk):
    return np.stack([_decode(path if data is None else io.BytesIO(data), path)
                     for path, data in chunk])


def _decode_many(paths):
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
    if workers < 2 or len(paths) < DECODE_POOL_MIN_FILES:
        decoded = list(map(_decode_chunk, chunks))
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            decoded = list(pool.imap(_decode_chunk, chunks))  # re-raises _decode's error
    return np.concatenate(decoded) if decoded else np.empty((0, 28, 28), np.uint8)


def _decode_all(parent, paths):
    """The images of `paths` (relative to `parent`), uint8 (N, 28, 28): from the cache
    (`cache_dir`) where a file's size and modification time are those it was decoded
    with, else decoded, and the cache updated. Cold, reading 32,460 small files is slow
    on its own; one cache file is not (benchmarks/README.md, "An Omniglot evaluation")."""
    cache = _cache_file(parent)
    entries = _read_cache(cache) if cache else {}
    misses = []
    for p in paths:
        stat = _stat(os.path.join(parent, p))
        hit = entries.get(p)
        if hit is None or stat is None or hit[:2] != stat:
            misses.append((p, stat))
    decoded = _decode_many([os.path.join(parent, p) for p, _ in misses])  # names a missing file
    for (p, stat), image in zip(misses, torch.from_numpy(decoded)):
        entries[p] = (*stat, image)
    images = [entries[p][2] for p in paths]
    if misses and cache:
        _write_cache(cache, entries)
    if not images:
        return torch.empty(0, 28, 28, dtype=torch.uint8)
    return torch.stack(images)


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
    chosen = list(range(len(background)))
    if train_classes is not None:
        if not isinstance(train_classes, int) or not 2 <= train_classes <= len(background):
            raise ValueError(f"--train-classes must be an integer from 2 to "
                             f"{len(background)} (Omniglot's background characters), "
                             f"got {train_classes!r}")
        g = torch.Generator().manual_seed(seed)
        chosen = sorted(torch.randperm(len(background), generator=g)[:train_classes].tolist())
    seen = [background[c] for c in chosen]
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
        try:
            torchvision.datasets.utils.download_url(ONE_SHOT_URL, folder, "all_runs.zip",
                                                    md5=ONE_SHOT_MD5)
        except Exception as e:
            raise FileNotFoundError(
                f"cannot find Lake et al.'s one-shot runs at {path} and cannot download them "
                f"({type(e).__name__}); put all_runs.zip of the Omniglot repository "
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
