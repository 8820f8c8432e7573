"""Pictures that do not distort: feature scatters with one scale on both axes,
whole epochs on the curves' x axes; --plot's frames drawn off the training path, the same
bytes, and none lost when a run is stopped."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

import main
import utils
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import study  # noqa: E402


def units_in_pixels(ax):
    """How many pixels one data unit spans along x and along y, as drawn."""
    (x0, y0), (x1, y1) = ax.transData.transform([(0, 0), (1, 1)])
    return abs(x1 - x0), abs(y1 - y0)


def thin_cloud():
    """The old GIFs' case: after one epoch x spans 0-0.2 and y only -0.015-0.005."""
    g = torch.Generator().manual_seed(0)
    features = torch.rand(200, 2, generator=g) * torch.tensor([0.2, 0.02]) - torch.tensor([0, 0.015])
    return features, torch.arange(200) % 10


def test_feature_scatter_has_equal_axis_scales(tmp_path):
    features, labels = thin_cloud()
    fig = utils.plot_features(features, labels, [str(d) for d in range(10)],
                              str(tmp_path / "f.png"), "thin", centers=torch.zeros(10, 2))
    x, y = units_in_pixels(fig.axes[0])
    assert abs(x - y) < 1e-6 * x, (x, y)  # 10x apart when matplotlib fills the square
    assert os.path.getsize(tmp_path / "f.png") > 0


def test_study_feature_panels_have_equal_axis_scales(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    features, labels = thin_cloud()
    path = str(tmp_path / "test_features.pt")
    torch.save({"features": features, "labels": labels, "classes": [str(d) for d in range(10)],
                "centers": torch.zeros(10, 2), "accuracy": 10.0}, path)
    fig, ax = plt.subplots(figsize=(4, 4.3))
    study.features_panel(ax, path, "thin", plt.get_cmap("tab10"), centers=True)
    fig.canvas.draw()
    x, y = units_in_pixels(ax)
    plt.close(fig)
    assert abs(x - y) < 1e-6 * x, (x, y)


def test_curves_have_whole_epoch_ticks(tmp_path):
    for epochs in (1, 2, 7):  # one epoch gave ticks 0.96 ... 1.04
        metrics = str(tmp_path / f"metrics{epochs}.csv")
        for e in range(1, epochs + 1):
            utils.append_metrics(metrics, dict(epoch=e, loss=1 / e, xent_loss=1 / e,
                                               center_loss=0.1, accuracy=90 + e, ratio=0.5,
                                               precision_at_1=80, map_at_r=70,
                                               ver_accuracy=85, tar_at_far=30))
        fig = utils.plot_curves(metrics, str(tmp_path / "curves.png"))
        for ax in fig.axes:
            low, high = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if low <= t <= high]
            assert ticks and all(float(t).is_integer() for t in ticks), (epochs, ax.get_title(), ticks)


def legend_labels(fig):
    legend = fig.axes[0].get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def test_legend_names_the_centers_when_they_are_drawn(tmp_path):
    features, labels = thin_cloud()
    names = [str(d) for d in range(10)]
    fig = utils.plot_features(features, labels, names, str(tmp_path / "c.png"), "c",
                              num_seen=8, centers=torch.zeros(8, 2))
    assert legend_labels(fig) == names[:8] + ["8 (unseen)", "9 (unseen)", "class centers"]
    fig = utils.plot_features(features, labels, names, str(tmp_path / "n.png"), "n")
    assert legend_labels(fig) == names  # softmax only: no centers drawn, none in the legend
    # 30 classes: too many names for a legend, but the black-edged dots still need one.
    fig = utils.plot_features(features, torch.arange(200) % 30, [str(d) for d in range(30)],
                              str(tmp_path / "many.png"), "many", centers=torch.zeros(30, 2))
    assert legend_labels(fig) == ["class centers"]


# ------------------------------------------------------------- drawing off the training path

def frames_and_gifs(save_dir):
    """{relative path: bytes} of a --plot run's frames and GIFs."""
    out = {}
    for split in ("train", "test"):
        for name in sorted(os.listdir(os.path.join(save_dir, split))):
            with open(os.path.join(save_dir, split, name), "rb") as f:
                out[f"{split}/{name}"] = f.read()
        with open(os.path.join(save_dir, f"{split}.gif"), "rb") as f:
            out[f"{split}.gif"] = f.read()
    return out


def test_background_drawing_gives_the_same_frames_and_gifs(tmp_path, micro_data, monkeypatch):
    flags = ["--data-root", micro_data, "--use-cpu", "--batch-size", "16", "--eval-freq", "1",
             "--max-epoch", "3", "--plot"]
    main.main(flags + ["--save-dir", str(tmp_path / "background")])
    monkeypatch.setattr(main, "PLOTS_IN_BACKGROUND", False)
    main.main(flags + ["--save-dir", str(tmp_path / "inline")])
    background, inline = (frames_and_gifs(tmp_path / d) for d in ("background", "inline"))
    assert sorted(background) == sorted(inline) and len(background) == 8  # 2 x 3 frames, 2 GIFs
    assert background == inline
    with Image.open(tmp_path / "background" / "test.gif") as gif:
        assert gif.n_frames == 3


def test_a_failed_frame_stops_the_run_with_its_reason(tmp_path):
    plotter = utils.Plotter()
    features, labels = torch.randn(10, 2), torch.arange(10) % 2
    # A frame whose folder cannot be made: a file stands where it should be.
    (tmp_path / "blocked").write_text("not a folder")
    with pytest.raises(RuntimeError, match="drawing a --plot frame failed: "):
        plotter.frame(str(tmp_path / "blocked"), str(tmp_path / "x.gif"), features, labels,
                      ["a", "b"], str(tmp_path / "blocked" / "epoch_1.png"), "t")
        for _ in range(20):  # the error is reported on a later frame, or at close
            plotter.frame(str(tmp_path / "f"), str(tmp_path / "y.gif"), features, labels,
                          ["a", "b"], str(tmp_path / "f" / "epoch_1.png"), "t")
        plotter.close()
    process = plotter.process
    plotter.close()  # as main.run's finally does: returns, and the drawing process is gone
    assert plotter.process is None and not process.is_alive()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_run_keeps_every_finished_epochs_frame(tmp_path, micro_data, sig, code):
    """Ctrl-C or SIGTERM in epoch 2: epoch 1's frames and both GIFs are written, the
    checkpoint resumes, and no drawing process outlives the run."""
    save_dir = str(tmp_path / "run")
    marker = f"plots-test-{os.getpid()}-{sig}"
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "main.py"), "--data-root",
                             micro_data, "--use-cpu", "--batch-size", "16", "--print-freq", "1",
                             "--eval-freq", "1", "--max-epoch", "3", "--plot", "--save-dir",
                             save_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PLOTS_TEST": marker})
    seen_epoch2 = False
    for line in proc.stdout:
        seen_epoch2 |= line.startswith("==> Epoch 2/3")
        if seen_epoch2 and line.startswith("Batch 2/4"):
            proc.send_signal(sig)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert "Interrupted. The checkpoint of epoch 1 is in" in rest
    for split in ("train", "test"):
        assert os.listdir(os.path.join(save_dir, split)) == ["epoch_1.png"]
        with Image.open(os.path.join(save_dir, f"{split}.gif")) as gif:
            assert gif.n_frames == 1
    with open(os.path.join(save_dir, "run.json")) as f:
        assert json.load(f)["outcome"] == ("interrupted" if sig == signal.SIGINT else "terminated")
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() in f.read():
                    left.append(pid)
        except OSError:
            pass
    assert not left, f"processes left behind: {left}"
    main.main(["--data-root", micro_data, "--use-cpu", "--batch-size", "16", "--eval-freq", "1",
               "--max-epoch", "3", "--plot", "--save-dir", save_dir,
               "--resume", os.path.join(save_dir, "checkpoint.pth.tar")])
    with Image.open(os.path.join(save_dir, "test.gif")) as gif:
        assert gif.n_frames == 3


def test_epoch_breakdown_benchmark_runs(tiny_data):
    """benchmarks/bench_epoch.py wraps main.py's phases by name: it must keep running, and
    its phases must add up to each side's epoch."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_epoch.py"),
                           "--data-root", tiny_data, "--epochs", "2", "--workers", "0",
                           "--train-images", "256", "--test-images", "128"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1].replace(".", "").isdigit():
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    phases = [k for k in rows if k != "epoch"]
    assert len(phases) == 8 and rows["epoch"][1] > 0
    for side in (0, 1):
        assert sum(rows[k][side] for k in phases) == pytest.approx(rows["epoch"][side], abs=0.01)
    assert rows["steps"][1] > 0 and rows["checkpoint"][1] > 0
    assert "plots at the end (last frames, both GIFs)" in done.stdout
