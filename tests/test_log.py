"""The committed record under log/: light enough for every clone, each LFW run re-checkable
from its pair scores, every run in log/runs.csv, and every tables.md rebuilt from its runs."""
import csv
import filecmp
import fnmatch
import importlib.util
import os
import shlex
import subprocess

import pytest

import evaluation
import main
import utils
from conftest import ROOT

# The weight policy (log/README.md): no tracked file over MAX_FILE but the GIFs and the
# studies' summary figures, and the whole tree under MAX_TREE.
MAX_FILE, MAX_TREE = 300 * 1024, 15 * 1024 * 1024
ALLOWED = ["gifs/*.gif", "log/*/*.png"]


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments",
                                                                     name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tracked(pattern=None):
    done = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], capture_output=True, text=True)
    paths = [p for p in done.stdout.split("\0") if p]
    return [p for p in paths if pattern is None or fnmatch.fnmatch(p, pattern)]


in_git = pytest.mark.skipif(
    subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode != 0,
    reason="not a git checkout")


@in_git
def test_a_clone_stays_light():
    sizes = {p: os.path.getsize(os.path.join(ROOT, p)) for p in tracked()
             if os.path.isfile(os.path.join(ROOT, p))}
    big = {p: s for p, s in sizes.items()
           if s > MAX_FILE and not any(fnmatch.fnmatch(p, a) for a in ALLOWED)}
    assert not big, f"tracked files over {MAX_FILE} bytes outside {ALLOWED}: {big}"
    assert sum(sizes.values()) <= MAX_TREE, f"tracked tree {sum(sizes.values()):,} bytes"
    # What one command redraws, and an LFW run's features, stay out (.gitignore).
    redrawn = [p for p in sizes if os.path.basename(p) in ("curves.png", "roc.png")
               or fnmatch.fnmatch(p, "log/*/lfw-*/test_features.pt")]
    assert not redrawn, redrawn


@in_git
def test_each_lfw_run_is_rechecked_from_its_pair_scores():
    runs = [os.path.dirname(p) for p in tracked("log/*/lfw-*/log_lfw.txt")]
    scored = {os.path.dirname(p) for p in tracked("log/*/lfw-*/pair_scores.json.gz")}
    # The View 2 runs of one H200 call lost theirs with that machine (log/README.md).
    assert scored == {r for r in runs if not r.startswith("log/lfw-view2/")}
    for run in sorted(scored):
        record = utils.load_pair_scores(os.path.join(ROOT, run, "pair_scores.json.gz"))
        last = utils.read_metrics(os.path.join(ROOT, run, "metrics.csv"))[-1]
        figures = evaluation.pair_scores_figures(record)
        assert record["epoch"] == int(last["epoch"]), run
        assert f"{figures['accuracy']:.2f}" == last["unseen_ver_accuracy"], run
        assert f"{figures['tar_at_far']:.2f}" == last["unseen_tar_at_far"], run
        assert f"{record['threshold']:.6f}" == last["lfw_threshold"], run
        # Scores recomputed from float16 features (the converted runs) round the AUC's
        # fifth decimal; a run's own scores give it exactly.
        tolerance = 5e-5 if "converted" in record else 0
        assert abs(figures["auc"] - float(last["unseen_auc"])) <= tolerance + 5e-6, run
        assert not set(record["trained_people"]) & {
            name.rsplit("_", 1)[0] for pair in record["pairs"] for name in pair[:2]}, run


@in_git
def test_runs_csv_lists_every_committed_run_with_a_command_that_repeats_its_log():
    index = load("runs_index")
    with open(os.path.join(ROOT, "log", "runs.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == index.run_folders(os.path.join(ROOT, "log"))
    for r in rows:
        assert r["device"] and r["commit"] and r["command"].startswith(("python main.py",
                                                                        "torchrun")), r
        if r["source"] != "log and git history":
            continue
        with open(os.path.join(ROOT, r["run"], next(
                f for f in os.listdir(os.path.join(ROOT, r["run"])) if f.startswith("log_")))) as f:
            logged = index.logged_args(f.read())
        argv = shlex.split(r["command"])[2:]
        args = main.get_parser().parse_args(argv)
        main.resolve_defaults(args, main.given_flags(argv))
        assert args.save_dir == r["run"]
        for key, value in logged.items():
            if key not in index.MACHINE and hasattr(args, key):
                assert getattr(args, key) == value, (r["run"], key)


@in_git
def test_every_committed_tables_md_rebuilds_byte_for_byte(tmp_path, capsys):
    study = load("study")
    tables = tracked("log/*/tables.md")
    assert tables
    for path in tables:
        runs = os.path.join(ROOT, os.path.dirname(path))
        out = tmp_path / os.path.basename(runs)
        study.main(["--report-only", "--runs-dir", runs, "--out-dir", str(out)])
        capsys.readouterr()
        assert filecmp.cmp(out / "tables.md", os.path.join(ROOT, path), shallow=False), path
