"""experiments/gifs.py: its runs are the committed reference runs' commands, and a run lands
its log and GIFs where README and log/README.md show them."""
import argparse
import importlib.util
import os

from PIL import Image

import main
from conftest import ROOT

spec = importlib.util.spec_from_file_location("gifs", os.path.join(ROOT, "experiments", "gifs.py"))
gifs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gifs)


def logged_args(name):
    """The Namespace in the Args line of log/popular/<name>/'s committed log."""
    folder = os.path.join(ROOT, "log", "popular", name)
    log = next(f for f in os.listdir(folder) if f.startswith("log_"))
    with open(os.path.join(folder, log)) as f:
        line = next(line for line in f if line.startswith("Args:"))
    return vars(eval(line[len("Args:"):], {"Namespace": argparse.Namespace}))


def test_runs_repeat_the_committed_logs_flags():
    where = {"data_root", "save_dir", "use_cpu", "gpu", "workers"}  # the machine's, not the run's
    for name in gifs.RUNS:
        want = logged_args(name)
        got = main.get_parser().parse_args(gifs.run_flags(name))
        main.resolve_defaults(got, set())  # as main.main does: the model, width, margin
        got = vars(got)
        assert {k: got[k] for k in want if k not in where} == \
               {k: v for k, v in want.items() if k not in where}, name
        assert got["plot"] and got["eval_freq"] == 1
    committed = {f for f in os.listdir(os.path.join(ROOT, "gifs")) if f.endswith(".gif")}
    assert committed == {g for run in gifs.RUNS.values() for g in run[3].values()}


def test_a_run_lands_its_log_and_gifs(tmp_path, tiny_data, monkeypatch, capsys):
    monkeypatch.setitem(gifs.RUNS, "fashion-softmax",
                        ("fashion-mnist", 0, 1, {"test.gif": "fashion_softmax_test.gif"}))
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--log-dir", str(tmp_path / "log"),
            "--gifs-dir", str(tmp_path / "gifs")]
    gifs.main(["--data-root", tiny_data, *dirs, "--only", "fashion-softmax", "--use-cpu"])
    landed = tmp_path / "log" / "fashion-softmax"
    assert sorted(os.listdir(landed)) == ["log_fashion-mnist.txt", "metrics.csv", "run.json"]
    with Image.open(tmp_path / "gifs" / "fashion_softmax_test.gif") as gif:
        assert gif.n_frames == 1
    with open(landed / "log_fashion-mnist.txt") as f:
        log = f.read()
    assert "weight_cent=0.0" in log and "plot=True" in log and "Finished." in log
    # A finished run is not trained again; it lands again.
    capsys.readouterr()
    gifs.main(["--data-root", tiny_data, *dirs, "--only", "fashion-softmax", "--use-cpu"])
    assert "fashion-softmax: finished, skipped" in capsys.readouterr().out
