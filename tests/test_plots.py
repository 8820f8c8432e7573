"""Pictures that do not distort: feature scatters with one scale on both axes,
whole epochs on the curves' x axes."""
import os
import sys

import torch

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
