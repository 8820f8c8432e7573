"""Helpers of the training script: distributed runs, logging, running averages,
plots and GIFs, checkpoints and the metrics file."""
import csv
import datetime
import gzip
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import zipfile

import torch
import torch.distributed as dist

from evaluation import ALL_PAIRS_FARS, all_pairs_field

__all__ = ["init_distributed", "close_distributed", "backend", "wrap_ddp", "gather",
           "all_average", "ranks_identical", "run_record", "describe_run", "open_run_record",
           "close_run_record", "Logger", "AverageMeter", "LossMeters", "project_2d", "plot_features",
           "make_gif", "Plotter", "plot_curves", "save_checkpoint", "load_checkpoint", "plot_roc",
           "save_pair_scores", "load_pair_scores", "CHECKPOINT_KEYS", "METRICS_FIELDS",
           "UNSEEN_FIELDS", "ONE_SHOT_FIELDS", "metrics_fields", "append_metrics",
           "read_metrics", "truncate_metrics"]


def init_distributed(use_gpu):
    """(rank, world size, device) of this process. Under torchrun (WORLD_SIZE > 1) this
    joins the process group: one process per device, nccl on CUDA, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device("cuda" if use_gpu else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_gpu:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if use_gpu else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def close_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def backend():
    return dist.get_backend()


def wrap_ddp(model, device):
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _world():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(tensor):
    """Every rank's CPU `tensor`, concatenated along dim 0 (shards may differ in size)."""
    if _world() == 1:
        return tensor
    parts = [None] * _world()
    dist.all_gather_object(parts, tensor)
    return torch.cat(parts)


def all_average(tensor):
    """The mean of `tensor` over the ranks (itself in a single process)."""
    if _world() == 1:
        return tensor
    dist.all_reduce(tensor)
    return tensor / _world()


def ranks_identical(*modules):
    """Whether every rank holds bit-identical state in `modules` (one gather)."""
    mine = [t.detach().cpu() for m in modules for t in m.state_dict().values()]
    parts = [None] * _world()
    dist.all_gather_object(parts, mine)
    return all(torch.equal(a, b) for other in parts[1:] for a, b in zip(parts[0], other))


ROOT = os.path.dirname(os.path.abspath(__file__))


def run_record(argv, use_gpu, device, world, amp):
    """How this invocation was made, for run.json and the log's first lines: the command
    as a shell line (its paths as given), the working directory (relative to this
    repository when inside it), torch and Python versions, the device, the precision, the
    git commit and whether tracked files differed from it, and the start time (UTC)."""
    script = "main.py"
    if argv is None:
        script, argv = sys.argv[0], sys.argv[1:]
        if os.path.isabs(script) and not os.path.relpath(script).startswith(".."):
            script = os.path.relpath(script)  # e.g. a runner's absolute path to main.py
    words = ["python", script]
    if world > 1:  # torchrun's own flags are not visible here: the process counts are
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        words = ["torchrun", f"--nproc_per_node={local}"] + (
            [f"--nnodes={world // local}"] if world != local else []) + [script]
    cwd = os.getcwd()
    inside = os.path.commonpath([cwd, ROOT]) == ROOT
    commit, dirty = _git("rev-parse", "HEAD"), _git("status", "--porcelain",
                                                    "--untracked-files=no")
    return {"command": shlex.join(words + list(argv)),
            "cwd": os.path.relpath(cwd, ROOT) if inside else cwd,
            "torch": torch.__version__, "python": platform.python_version(),
            "device": _device_name(use_gpu, device), "processes": world,
            "precision": "bf16 autocast" if amp else "fp32",
            "commit": commit, "dirty": None if dirty is None else dirty != "",
            "start": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "wall_s": None, "outcome": "running"}


def _git(*words):
    """git's output in this repository, stripped; None without git or outside a checkout
    (a copied file)."""
    try:
        done = subprocess.run(["git", "-C", ROOT, *words], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _device_name(use_gpu, device):
    if use_gpu:
        return f"GPU: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"CPU: {model}, {threads} thread{'s' if threads > 1 else ''}"


def describe_run(entry):
    """run_record's entry in words: the log's first two lines."""
    commit = ("no git commit" if entry["commit"] is None else
              f"commit {entry['commit'][:12]}" + (" with local changes" if entry["dirty"] else ""))
    processes = f" x {entry['processes']} processes" if entry["processes"] > 1 else ""
    return (f"Command: {entry['command']}  (in {entry['cwd']})\n"
            f"Made with torch {entry['torch']}, Python {entry['python']}, {entry['device']}"
            f"{processes}, {entry['precision']}; {commit}; started {entry['start']}")


def open_run_record(path, entry, kind):
    """Write run.json: a new training run starts it; a resume or an --evaluate of the same
    folder adds its entry to the record's "later" list. Returns (record, entry as stored)."""
    record = None
    if kind != "train" and os.path.exists(path):
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = None
    if record is None:
        record = dict(entry, kind=kind)
        stored = record
    else:
        stored = dict(entry, kind=kind)
        record.setdefault("later", []).append(stored)
    _write_json(path, record)
    return record, stored


def close_run_record(path, record, stored, wall_s, outcome):
    """The invocation's wall time and how it ended, written into run.json."""
    stored.update(wall_s=round(wall_s, 1), outcome=outcome)
    _write_json(path, record)


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


class Logger:
    """Writes to the console and to a file, as the popular script's utils.Logger."""

    def __init__(self, path, mode="w", console=True):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.console = sys.stdout
        self.echo = console
        self.file = open(path, mode, buffering=1)  # line-buffered: a killed run keeps its log

    def write(self, msg):
        if self.echo:
            self.console.write(msg)
        self.file.write(msg)

    def flush(self):
        self.console.flush()
        self.file.flush()

    def close(self):
        self.file.close()


class AverageMeter:
    """The last value and the running average, weighted by batch size."""

    def __init__(self):
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


class LossMeters:
    """An epoch's [loss, xent, lambda * center loss]: the last batch's and the running
    averages weighted by batch size (AverageMeter's arithmetic, in float64), and the first
    batch whose loss is not finite. Kept on the device: read() makes the host wait for the
    GPU, so the training loop reads them only where the console prints and at its end."""

    def __init__(self):
        self.sums = self.last = self.bad_batch = self.bad_value = None
        self.count = 0

    def update(self, values, n, batch_idx):
        if self.sums is None:
            self.sums = torch.zeros(3, dtype=torch.float64, device=values.device)
            self.bad_batch = torch.full((), -1, device=values.device)
            self.bad_value = torch.zeros((), device=values.device)
        self.last = values
        self.sums += values.double() * n
        self.count += n
        new = ~torch.isfinite(values[0]) & (self.bad_batch < 0)
        self.bad_batch = torch.where(new, batch_idx, self.bad_batch)
        self.bad_value = torch.where(new, values[0], self.bad_value)

    def read(self):
        """(last values, averages, None) as floats, or with (batch index, loss) of the
        first non-finite loss as the third: one copy from the device (float32 values are
        exact in float64)."""
        numbers = torch.cat([self.last.double(), self.sums / self.count,
                             self.bad_batch.double().view(1), self.bad_value.double().view(1)])
        *last, bad, bad_value = numbers.tolist()
        return last[:3], last[3:], (int(bad), bad_value) if bad >= 0 else None


def project_2d(features):
    """The features themselves when 2-D, else their first two principal components."""
    if features.shape[1] <= 2:
        return features
    centered = features.double() - features.double().mean(0)
    _, _, v = torch.linalg.svd(centered, full_matrices=False)
    return (centered @ v[:2].T).float()


def _colors(num_classes):
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "hsv")
    return [cmap(j % cmap.N if num_classes <= 20 else j / num_classes) for j in range(num_classes)]


def plot_features(features, labels, classes, path, title, num_seen=None, centers=None):
    """Scatter of (N, D) features coloured by class, one fixed colour per class. Classes
    from `num_seen` on are held-out ones, marked "(unseen)" in the legend; `centers`
    (C, D), if given, are drawn as black-edged dots, "class centers" in the legend (2-D
    features only). Equal scales on both axes. Returns the saved (closed) figure, whose
    axes can be read back."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    points = project_2d(features).numpy()
    labels = labels.numpy()
    num_seen = len(classes) if num_seen is None else num_seen
    fig, ax = plt.subplots(figsize=(6, 6), dpi=80)
    handles = []  # the legend's markers, drawn at one size: the points are too small to see
    for j, (name, color) in enumerate(zip(classes, _colors(len(classes)))):
        pts = points[labels == j]
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=1, color=color, rasterized=True)
            if len(classes) <= 20:  # more names than a legend can show
                handles.append(Line2D([], [], ls="", marker="o", ms=5, color=color,
                                      label=name if j < num_seen else name + " (unseen)"))
    if centers is not None and features.shape[1] == 2:
        c = centers.detach().float().cpu().numpy()
        ax.scatter(c[:, 0], c[:, 1], s=40, c=_colors(len(classes))[:len(c)],
                   edgecolors="black", linewidths=1.2, zorder=3)
        # The black-edged dots are the learned centers, each in its class's colour.
        handles.append(Line2D([], [], ls="", marker="o", ms=7, markerfacecolor="lightgray",
                              markeredgecolor="black", markeredgewidth=1.2,
                              label="class centers"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=7)
    # One unit is as long on both axes: otherwise matplotlib stretches a thin cloud to a
    # square and the cluster geometry center loss is about is lost.
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return fig


class Plotter:
    """Draws --plot's frames off the training path: one background process takes each
    frame's features and draws it with plot_features while the next epoch trains, and the
    GIFs are assembled once, by close(), from every frame on disk (rebuilding them each epoch
    made the run quadratic in its epochs). Frames and GIFs are the bytes the same calls
    give in the training process (background=False does exactly that).

    At most `pending` frames wait in the queue (each holds one split's features of one
    epoch): a training process that outruns the drawing waits for it. close() draws what
    waits, assembles the GIFs and ends the process; it is what an interrupted run calls
    too. The drawing process ignores SIGINT, so Ctrl-C reaches the trainer alone, and
    stops by itself if the trainer dies.
    """

    def __init__(self, background=True, pending=2):
        self.gifs = {}  # GIF path: its frames' folder, assembled by close()
        self.process = None
        if background:
            import multiprocessing
            # spawn, not fork: a forked child of a process that ran OpenMP kernels can hang
            context = multiprocessing.get_context("spawn")
            self.jobs, self.errors = context.Queue(maxsize=pending), context.Queue()
            self.process = context.Process(target=_draw_frames, args=(self.jobs, self.errors),
                                           daemon=True, name="center-loss-plots")
            self.process.start()

    def frame(self, frames_dir, gif_path, *plot_args):
        """Draw plot_features(*plot_args) (its path a frame in frames_dir) and put the
        frame into gif_path at close()."""
        self.gifs[gif_path] = frames_dir
        if self.process is None:
            plot_features(*plot_args)
            return
        if not self._put(plot_args):
            raise RuntimeError("the --plot drawing process ended")

    def close(self):
        """Draw every frame still waiting, assemble the GIFs, end the drawing process."""
        if self.process is not None:
            process, self.process = self.process, None
            self._put(None, process)  # an ended process has nothing left to draw
            process.join()
            self._check()
        for gif_path, frames_dir in self.gifs.items():
            make_gif(frames_dir, gif_path)

    def _put(self, job, process=None):
        """Queue a job, waiting while `pending` wait (a drawing error raised); False when
        the drawing process has ended."""
        import queue
        process = process or self.process
        while True:
            self._check()
            if not process.is_alive():
                return False
            try:
                self.jobs.put(job, timeout=1)
                return True
            except queue.Full:
                pass

    def _check(self):
        import queue
        try:
            error = self.errors.get_nowait()
        except queue.Empty:
            return
        raise RuntimeError(f"drawing a --plot frame failed: {error}")


def _draw_frames(jobs, errors):
    """The drawing process: plot_features for each job until None (or the trainer is gone)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    parent = os.getppid()
    while True:
        try:
            job = jobs.get(timeout=5)
        except Exception:  # queue.Empty: nothing yet; give up if the trainer died
            if os.getppid() != parent:
                return
            continue
        if job is None:
            return
        try:
            plot_features(*job)
        except Exception as e:  # reported to the trainer, which stops
            errors.put(f"{type(e).__name__}: {e}")
            return


def make_gif(frames_dir, path, duration_ms=400):
    """Assemble frames_dir/epoch_N.png, in epoch order, into an endlessly looping GIF."""
    from PIL import Image
    if not os.path.isdir(frames_dir):  # no frame was drawn (a failed one reported already)
        return
    names = [f for f in os.listdir(frames_dir) if re.fullmatch(r"epoch_\d+\.png", f)]
    names.sort(key=lambda f: int(f[6:-4]))
    if not names:
        return
    frames = []
    for name in names:
        with Image.open(os.path.join(frames_dir, name)) as im:
            frames.append(im.convert("RGB").quantize(colors=64))
    tmp = path + ".tmp.gif"
    frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=duration_ms,
                   loop=0, optimize=True)
    os.replace(tmp, path)


METRICS_FIELDS = ["epoch", "loss", "xent_loss", "center_loss", "accuracy", "error_rate",
                  "intra", "inter", "ratio", "lr_model", "epoch_time_s",
                  "precision_at_1", "r_precision", "map_at_r",
                  "ver_accuracy", "ver_accuracy_std", "auc", "tar_at_far"]
# The same figures on the held-out classes' test images (--holdout-classes).
UNSEEN_FIELDS = ["unseen_" + k for k in METRICS_FIELDS[-7:]]
# Lake et al.'s one-shot error (%, mean and std over runs) by cosine and by L2 distance.
ONE_SHOT_FIELDS = ["oneshot_error", "oneshot_error_std", "oneshot_error_l2",
                   "oneshot_error_std_l2"]


# LFW: the threshold chosen on trained people's pairs, and the accuracy it has there (%).
LFW_FIELDS = ["lfw_threshold", "lfw_threshold_accuracy"]


def metrics_fields(open_set, one_shot, lfw=False):
    """metrics.csv's columns: METRICS_FIELDS, the all-pairs TARs, and for an open set
    the unseen classes' figures, then the one-shot error when there are one-shot runs,
    and LFW's threshold (its unseen_ver_accuracy is the protocol pairs' accuracy)."""
    tars = [all_pairs_field(far) for far in ALL_PAIRS_FARS]
    fields = METRICS_FIELDS + tars
    if open_set:
        fields += UNSEEN_FIELDS + ["unseen_" + t for t in tars]
    return fields + (ONE_SHOT_FIELDS if one_shot else []) + (LFW_FIELDS if lfw else [])


def append_metrics(path, row, fields=METRICS_FIELDS):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_metrics(path):
    """metrics.csv as a list of dicts (an empty value where a column is missing)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f, restval=""))


def truncate_metrics(path, last_epoch, fields=METRICS_FIELDS):
    """Drop rows after `last_epoch`: a resumed run writes those epochs again."""
    if not os.path.exists(path):
        return
    rows = [r for r in read_metrics(path) if int(r["epoch"]) <= last_epoch]
    os.remove(path)
    for row in rows:
        append_metrics(path, {k: row.get(k, "") for k in fields}, fields)


def _column(rows, key):
    """(epochs, values) of the rows where `key` has a value (older files lack columns)."""
    pairs = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key, "") not in ("", None)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def save_pair_scores(record, path):
    """Write evaluation.pair_scores_record as gzipped JSON (mtime 0: the same record gives
    the same bytes), through a temp file as the checkpoints."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(json.dumps(record, indent=None).encode())
    os.replace(tmp, path)


def load_pair_scores(path):
    with gzip.open(path, "rt") as f:
        return json.load(f)


def plot_curves(metrics_path, path):
    """Test accuracy, losses, the intra/inter-class ratio, retrieval and verification
    over epochs; held-out classes dashed; whole epochs on the x axes. Returns the saved
    (closed) figure, or None when the file has no rows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    rows = read_metrics(metrics_path)
    if not rows:
        return
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), dpi=80)
    axes = axes.ravel()
    axes[0].plot(*_column(rows, "accuracy"), "o-", ms=3)
    axes[0].set(title="test accuracy (%)", xlabel="epoch")
    for key in ("loss", "xent_loss", "center_loss"):
        epochs, values = _column(rows, key)
        if any(values):  # softmax-only runs have no center loss term
            axes[1].plot(epochs, values, "o-", ms=3, label=key)
    axes[1].set(title="training losses (epoch mean)", xlabel="epoch", yscale="log")
    axes[1].legend(fontsize=8)
    axes[2].plot(*_column(rows, "ratio"), "o-", ms=3)
    axes[2].set(title="intra / inter-class distance (test)", xlabel="epoch")
    panels = [(axes[3], "retrieval, cosine (%)", ["precision_at_1", "map_at_r"]),
              (axes[4], "verification accuracy, cosine (%)", ["ver_accuracy"]),
              (axes[5], "TAR @ FAR, cosine (%)", ["tar_at_far", all_pairs_field(1e-4)])]
    for ax, title, keys in panels:
        for prefix, style in (("", "o-"), ("unseen_", "s--")):
            for key in keys:
                epochs, values = _column(rows, prefix + key)
                if values:
                    ax.plot(epochs, values, style, ms=3, label=prefix + key)
        ax.set(title=title, xlabel="epoch")
        if ax.lines:
            ax.legend(fontsize=7)
    # Epochs are whole numbers; min_n_ticks=1: also for one epoch, whose axis holds one integer.
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def plot_roc(curves, path, title):
    """ROC curves, {name: (fpr, tpr)}, with the false accept rate on a log axis (the
    low-FAR end is where face verification is judged)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=80)
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr.clamp(min=1e-4).numpy(), tpr.numpy(), label=name)
    ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="false accept rate",
           ylabel="true accept rate")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def save_checkpoint(state, path):
    """torch.save to a temp file, then rename: a kill mid-write keeps the old file."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


CHECKPOINT_KEYS = ("epoch", "model", "center_loss", "optimizer_model", "optimizer_cent",
                   "scheduler", "shuffle_rng", "cpu_rng", "elapsed_s", "args")


def load_checkpoint(path, device="cpu"):
    """The checkpoint at `path`; ValueError naming the file, what is wrong with it and
    what to pass instead when it is not one of main.py's."""
    instead = "pass the checkpoint.pth.tar that main.py saves in its --save-dir"
    try:
        # weights_only=True: unpickling a checkpoint cannot run code.
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # a text file, a truncated file, another program's pickle ...
        # torch's own message advises weights_only=False, which is no fix for a wrong file.
        raise ValueError(f"{path} is not a checkpoint of main.py: {_unreadable(path)}; "
                         f"{instead}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a checkpoint of main.py: it has no "
                         f"{', '.join(missing)}; {instead}")
    return ckpt


def _unreadable(path):
    """Why torch.load cannot read `path`, in words: torch.save writes a zip archive."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    if head != b"PK\x03\x04":
        return "torch.save did not write it (a text file, or another program's?)"
    if not zipfile.is_zipfile(path):  # the archive's directory, at its end, is missing
        return "the file is cut short (a copy or a save that did not finish?)"
    return ("it is damaged, or holds objects other than tensors and numbers, which main.py "
            "does not load (unpickling them could run code)")
