"""experiments/study.py: its runs are valid main.py commands, finished runs are skipped and
interrupted ones resumed, and the tables and figures are built from the runs' own files."""
import csv
import importlib.util
import os

import pytest
import torch

import evaluation
import main
import utils
from conftest import ROOT

spec = importlib.util.spec_from_file_location("study", os.path.join(ROOT, "experiments", "study.py"))
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def all_settings():
    return [s for runs in study.groups().values() for s in runs]


def test_every_run_is_a_valid_main_command_with_its_settings():
    names = {}
    for s in all_settings():
        if s.get("dataset") in (study.OMNIGLOT, study.LFW):
            continue  # their own schedules: test_omniglot_runs, test_lfw_runs
        args = main.get_parser().parse_args(study.run_flags(**s))
        assert args.weight_cent == s.get("lam", 0.003)
        assert args.feat_dim == s.get("dim", 2) and args.center_update == "paper"
        assert args.max_epoch == (study.FASHION_MAX_EPOCH if args.dataset == study.FASHION
                                  else study.MAX_EPOCH) and args.eval_freq == 1
        assert args.lr_model == s.get("lr", study.LR)
        assert bool(args.holdout_classes) == s.get("open_set", False)
        assert args.dataset == s.get("dataset", "mnist") and args.seed == s.get("seed", 1)
        # One name per distinct configuration (shared runs, e.g. lambda 0.003 at alpha 0.5,
        # map to the same name, and lambda 0 ignores alpha).
        names.setdefault(study.run_name(**s), set()).add(tuple(study.run_flags(**s)))
    assert all(len(flags) == 1 for flags in names.values())
    assert study.run_name(lam=0, alpha=0.1) == study.run_name(lam=0) == "mnist-d2-lam0"
    assert study.run_name(open_set=True, dim=128, lam=0.003, seed=2, lr=0.005) == \
        "mnist-open-d128-lam0.003-alpha0.5-lr0.005-seed2"
    assert main.get_parser().parse_args(study.run_flags(lr=0.005)).lr_model == 0.005


def test_lfw_runs(monkeypatch):
    monkeypatch.setattr(study, "LFW_BEST_LAM", 0.003)  # as once View 1's sweep has chosen
    runs = study.groups()["lfw"]
    # the two softmax-only runs, the λ sweep, CosFace alone and with λ at two rates
    assert len(runs) == 2 + len(study.LFW_LAMBDAS) - 1 + 2 * 2
    names = set()
    for s in runs:
        args = main.get_parser().parse_args(study.run_flags(**s))
        assert args.dataset == "lfw" and args.lfw_split == "view1" and args.model == "resnet10"
        assert args.feat_dim == 512 and args.weight_cent == s["lam"] and args.head == s["head"]
        assert args.lfw_min_images == s["min_images"] and args.max_epoch == study.LFW_MAX_EPOCH
        assert args.lr_model == s["lr"]
        assert study.max_epoch(study.run_name(**s)) == study.LFW_MAX_EPOCH
        names.add(study.run_name(**s))
    assert len(names) == len(runs)
    assert study.run_name(**study.lfw_run(0.003, head="cosface", seed=2)) == \
        "lfw-view1-cosface-lam0.003-alpha0.5-min2-seed2"
    assert study.run_name(**study.lfw_run(0, min_images=1)) == "lfw-view1-lam0"
    assert study.run_name(**study.lfw_run(0)) == "lfw-view1-lam0-min2"  # LFW_MIN_IMAGES
    assert study.run_name(**study.lfw_run(0, head="cosface", lr=study.LFW_COSFACE_LR)) == \
        "lfw-view1-cosface-lam0-min2-lr0.01"


def test_lfw_view2_runs(monkeypatch):
    monkeypatch.setattr(study, "LFW_BEST_LAM", 0.003)
    runs = study.groups()["lfw-view2"]
    assert len(runs) == 4 * 10
    # softmax only and λ fold by fold first, then the CosFace arms at their own rate
    first = [(s["split"], s["lam"], s["head"]) for s in runs[:20]]
    assert first == [(f"fold{k}", lam, "softmax") for k in range(1, 11) for lam in (0, 0.003)]
    assert all(s["head"] == "cosface" and s["lr"] == study.LFW_COSFACE_LR for s in runs[20:])
    assert all(s["lr"] == study.LFW_LR for s in runs[:20])
    for s in runs:
        args = main.get_parser().parse_args(study.run_flags(**s))
        assert args.lfw_split == s["split"] and args.lr_model == s["lr"]
    # two processes: each fold's pair of arms runs side by side, one in each part
    names = [study.run_name(**s) for s in study.groups()["lfw"] + runs]
    one, two = study.part_of(names, 1, 2), study.part_of(names, 2, 2)
    for k in range(1, 11):
        pair = {f"lfw-fold{k}-lam0-min2", f"lfw-fold{k}-lam0.003-alpha0.5-min2"}
        assert len(pair & set(one)) == 1 and len(pair & set(two)) == 1


def test_lfw_distance_runs():
    """One change at a time to View 1's best arm, each parsed as main.py would."""
    runs = study.groups()["lfw-distance"]
    base = study.run_flags(**study.lfw_run(study.LFW_BEST_LAM))
    want = {"lfw-view1-lam0.003-alpha0.5-min2-people296": ["--train-classes", "296"],
            "lfw-view1-lam0.003-alpha0.5-min2-people592": ["--train-classes", "592"],
            "lfw-view1-lam0.003-alpha0.5-min2-resnet18": ["--model", "resnet18"],
            "lfw-view1-lam0.003-alpha0.5-min2-40epochs": ["--max-epoch", "40", "--stepsize", "16"]}
    assert [study.run_name(**s) for s in runs[:-1]] == list(want)
    assert study.run_name(**runs[-1]) == "lfw-view1-lam0-min2-40epochs"
    parse = lambda flags: vars(main.get_parser().parse_args(flags))  # noqa: E731
    for s, changed in zip(runs, want.values()):
        got, ref = parse(study.run_flags(**s)), parse(base)
        assert {k for k in got if got[k] != ref[k]} == {
            f.lstrip("-").replace("-", "_") for f in changed[::2]}
        assert parse(base + changed) == got
        assert study.max_epoch(study.run_name(**s)) == got["max_epoch"]
    assert study.run_name(**study.lfw_run(0.003)) == "lfw-view1-lam0.003-alpha0.5-min2"


def test_parts_share_the_runs_out():
    names = [f"run{i}" for i in range(7)]
    parts = [study.part_of(names, k, 3) for k in (1, 2, 3)]
    assert parts == [["run0", "run3", "run6"], ["run1", "run4"], ["run2", "run5"]]
    assert study.part_of(names, 1, 1) == names


def test_omniglot_runs(monkeypatch):
    monkeypatch.setattr(study, "OMNIGLOT_BEST_LAM", 0.01)  # as once the λ sweep has chosen
    runs = study.groups()["omniglot"] + study.groups()["classes"]
    assert len(runs) == len(study.OMNIGLOT_LAMBDAS) + 3 + 2 * 2 * len(study.CLASS_COUNTS)
    names = {}
    for s in runs:
        name = study.run_name(**s)
        args = main.get_parser().parse_args(study.run_flags(**s))
        k = s["k"]
        assert args.dataset == "omniglot" and args.feat_dim == 128 and args.optimizer == "adam"
        assert args.train_classes == (None if k == 964 else k) and args.seed == s["seed"]
        assert args.weight_cent == s["lam"] and args.center_update == "paper"
        # every K gets about the steps (and the evaluations) of 15 epochs of all 964 classes,
        # but at most 60 epochs: small K would otherwise train for hundreds of epochs
        steps = args.max_epoch * -(-16 * k // args.batch_size)
        assert abs(steps - 15 * 121) <= 0.1 * 15 * 121 or args.max_epoch == 60, (k, steps)
        assert 15 <= args.max_epoch <= 60 and (args.max_epoch == 60) == (k <= 100)
        assert args.max_epoch // args.eval_freq == 15 and args.max_epoch == study.max_epoch(name)
        assert args.stepsize == 10 * args.eval_freq
        names.setdefault(name, set()).add(tuple(study.run_flags(**s)))
    assert all(len(flags) == 1 for flags in names.values())
    assert study.run_name(**study.omniglot_run(0.01, k=30, seed=2)) == \
        "omniglot-d128-k30-lam0.01-alpha0.5-seed2"
    monkeypatch.setattr(study, "OMNIGLOT_BEST_LAM", None)  # not chosen: those runs wait
    assert study.groups()["classes"] == [] and len(study.groups()["omniglot"]) == 6


def test_omniglot_longer_runs():
    """λ 0.01 and 0.1 run on: the same schedule (a decay every 10 epochs) for 25 epochs,
    under names of their own, so that the 15-epoch runs of the sweep stay as they are."""
    for s, lam in zip(study.groups()["omniglot-longer"], (0.01, 0.1)):
        name = study.run_name(**s)
        assert name == f"omniglot-d128-lam{lam:g}-alpha0.5-25epochs"
        short = study.run_flags(**study.omniglot_run(lam))
        args = main.get_parser().parse_args(study.run_flags(**s))
        assert args.max_epoch == study.max_epoch(name) == 25 and args.stepsize == 10
        assert args.eval_freq == 1 and args.weight_cent == lam
        # the flags of the 15-epoch run but --max-epoch
        flags = study.run_flags(**s)
        i = flags.index("--max-epoch")
        assert flags[:i] + flags[i + 2:] == short[:i] + short[i + 2:]


def write_run(runs_dir, name, accuracies, extra=None, finished=True):
    run_dir = os.path.join(runs_dir, name)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as f:
        fields = ["epoch", "accuracy"] + sorted(extra or {})
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for epoch, acc in enumerate(accuracies, 1):
            writer.writerow({"epoch": epoch, "accuracy": acc, **(extra or {})})
    with open(os.path.join(run_dir, "log_mnist.txt"), "w") as f:
        f.write("==> Epoch 1\n" + ("Finished. Total elapsed time (h:m:s): 0:01:00\n" if finished else ""))
    return run_dir


class FakeChild:
    """subprocess.Popen's stand-in: records the command, exits with `code`."""

    def __init__(self, calls, code):
        self.calls, self.code = calls, code

    def __call__(self, command, **kwargs):
        self.calls.append(command)
        return self

    def wait(self):
        return self.code


def test_skip_resume_or_start(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(study.subprocess, "Popen", FakeChild(calls, 0))
    args = study.argparse.Namespace(runs_dir=str(tmp_path), data_root="DATA")
    write_run(tmp_path, "done", [99.0] * study.MAX_EPOCH)
    study.train("done", ["--weight-cent", "1"], args, ["--use-cpu"])
    assert calls == []  # finished: skipped

    half = write_run(tmp_path, "half", [99.0] * 3, finished=False)
    open(os.path.join(half, "checkpoint.pth.tar"), "w").close()
    study.train("half", ["--weight-cent", "1"], args, ["--use-cpu"])
    assert calls[-1][-2:] == ["--resume", os.path.join(half, "checkpoint.pth.tar")]
    assert calls[-1][2:6] == ["--data-root", "DATA", "--save-dir", half]
    assert "--use-cpu" in calls[-1]

    study.train("new", ["--weight-cent", "1"], args, [])
    assert "--resume" not in calls[-1] and calls[-1][-2:] == ["--weight-cent", "1"]

    # A Fashion-MNIST run that finished MAX_EPOCH epochs is lengthened to FASHION_MAX_EPOCH
    # from its checkpoint (main.py continues the same schedule), then counts as finished.
    name = study.run_name(dataset=study.FASHION, lam=0)
    short = write_run(tmp_path, name, [90.0] * study.MAX_EPOCH)
    open(os.path.join(short, "checkpoint.pth.tar"), "w").close()
    assert study.MAX_EPOCH < study.FASHION_MAX_EPOCH and not study.finished(short + os.sep)
    study.train(name, study.run_flags(dataset=study.FASHION, lam=0), args, [])
    assert calls[-1][-2:] == ["--resume", os.path.join(short, "checkpoint.pth.tar")]
    write_run(tmp_path, name, [90.0] * study.FASHION_MAX_EPOCH)
    assert study.finished(short + os.sep)


def test_a_failed_run_stops_the_study(tmp_path, monkeypatch):
    monkeypatch.setattr(study.subprocess, "Popen", FakeChild([], 1))
    args = study.argparse.Namespace(runs_dir=str(tmp_path), data_root="DATA")
    with pytest.raises(SystemExit, match="new: main.py exited with 1"):
        study.train("new", [], args, [])


def test_tables_and_figures_come_from_the_runs_files(tmp_path):
    n = study.MAX_EPOCH
    figures = {"precision_at_1": "98.76", "map_at_r": "97.65", "ver_accuracy": "99.10",
               "tar_at_far": "88.80", "auc": "0.99870"}
    write_run(tmp_path, study.run_name(lam=0.01), [98.0] * (n - 3) + [99.0, 99.1, 99.2], figures)
    write_run(tmp_path, study.run_name(lam=1), [90.0] * (n - 1) + [95.0], figures)  # not converged
    write_run(tmp_path, study.run_name(lam=0.1), [90.0] * 3, figures, finished=False)  # unfinished
    g = torch.Generator().manual_seed(0)
    torch.save({"features": torch.randn(50, 2, generator=g), "labels": torch.arange(50) % 10,
                "classes": [str(d) for d in range(10)], "centers": torch.randn(10, 2, generator=g),
                "accuracy": 99.2}, os.path.join(tmp_path, study.run_name(lam=0.01), "test_features.pt"))
    unseen = {"unseen_ver_accuracy": "91.23", "unseen_map_at_r": "45.67",
              "unseen_precision_at_1": "80.00", "unseen_tar_at_far": "12.34", **figures}
    write_run(tmp_path, study.run_name(**study.fig5_run(lam=0.003)), [99.5] * n, unseen)
    write_run(tmp_path, study.run_name(open_set=True, dim=2, lam=0.003, lr=study.DIM_LR),
              [99.5] * n, unseen)
    # Second seed and Fashion-MNIST: tables name the runs by their settings.
    write_run(tmp_path, study.run_name(lam=0, seed=2), [98.0] * n, figures)
    write_run(tmp_path, study.run_name(**study.fig5_run(seed=2, **study.BEST_OPEN)),
              [99.5] * n, unseen)
    fashion, nf = study.groups()["fashion"], study.FASHION_MAX_EPOCH
    write_run(tmp_path, study.run_name(**fashion[0]), [91.0] * nf, figures)
    curve = [dict(unseen, unseen_ver_accuracy=f"{70 + e}") for e in range(nf)]
    fashion_open = write_run(tmp_path, study.run_name(**fashion[3]), [93.0] * nf, unseen)
    write_run(tmp_path, study.run_name(**fashion[5]), [90.5] * nf, figures)  # λ 1, seed 2
    with open(os.path.join(fashion_open, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "accuracy"] + sorted(unseen))
        writer.writeheader()
        writer.writerows({"epoch": e + 1, "accuracy": 93.0, **row} for e, row in enumerate(curve))

    args = study.argparse.Namespace(runs_dir=str(tmp_path), out_dir=str(tmp_path))
    study.report(args)
    with open(os.path.join(tmp_path, "tables.md")) as f:
        tables = f.read()
    sections = {}
    for part in tables.split("### ")[1:]:  # {table title: {first cell: row}}
        title, *lines = part.splitlines()
        sections[title.split(":")[0]] = {l.split(" | ")[0].strip("| "): l for l in lines
                                         if l.startswith("| ")}
    fig3, width, fig5a = sections["Figure 3"], sections["Feature width, open set"], \
        sections["Figure 5a"]
    assert fig3["0.01"] == "| 0.01 | 99.20 | 98.76 | 97.65 | 99.10 | 88.80 | 0.9987 | 0.20 |"
    assert fig3["1"].endswith("| 5.00 (NOT converged) |")
    assert fig3["0.1"].startswith("| 0.1 | — | — |")  # unfinished runs are never quoted
    assert fig3["0 (softmax only)"].endswith("| not finished |")
    # L2 figures come from the saved features, with main.py's pairs.
    saved = torch.load(os.path.join(tmp_path, study.run_name(lam=0.01), "test_features.pt"))
    r = evaluation.retrieval_metrics(saved["features"], saved["labels"], metric="euclidean")
    pairs = evaluation.verification_pairs(saved["labels"], evaluation.NUM_PAIRS,
                                          seed=evaluation.PAIRS_SEED)
    v = evaluation.verification_metrics(saved["features"], saved["labels"], pairs,
                                        metric="euclidean")
    l2 = sections["Figure 3 by L2 distance"]
    assert l2["0.01"] == "| 0.01 | " + " | ".join(
        f"{100 * x:.2f}" for x in (r["precision_at_1"], r["map_at_r"], v["accuracy"],
                                   v["tar_at_far"])) + " |"
    assert l2["1"] == "| 1 | — | — | — | — |"  # no saved features: nothing made up
    unseen_row = "| 99.50 | 99.10 | 97.65 | 91.23 | 45.67 | 80.00 | 12.34 | 0.00 |"
    assert width["2, 0.003"] == "| 2, 0.003 " + unseen_row
    assert fig5a["0.003"] == "| 0.003 " + unseen_row
    assert sections["Figure 5b"]["0.5"] == "| 0.5 " + unseen_row  # the same run
    best_open = study.describe(study.BEST_OPEN)
    assert sections["Second seed, closed set"]["softmax only, seed 2"].startswith(
        "| softmax only, seed 2 | 98.00 | 98.76 |")
    # A table none of whose runs has figures is left out (here: no saved features), and so
    # is every group that never ran in this folder: tables.md lists what ran there.
    assert "Second seed, closed set by L2 distance" not in sections
    assert not [t for t in sections if t.startswith(("Omniglot", "LFW", "How many"))]
    assert not os.path.exists(os.path.join(tmp_path, "omniglot_fig5.png"))
    assert not os.path.exists(os.path.join(tmp_path, "lfw.png"))
    assert sections["Second seed, open set"][best_open + ", seed 2"] == \
        f"| {best_open}, seed 2 " + unseen_row
    assert sections["Second seed, open set"]["softmax only, seed 2"].endswith("| not finished |")
    assert sections["Fashion-MNIST, closed set"]["softmax only"].startswith(
        "| softmax only | 91.00 | 98.76 |")
    assert sections["Fashion-MNIST, open set"][best_open].startswith(
        f"| {best_open} | 93.00 | 99.10 | 97.65 | {70 + nf - 1:.2f} |")  # the last epoch's
    best_2d = study.describe(study.BEST_2D)
    assert sections["Fashion-MNIST, closed set"][best_2d + ", seed 2"].startswith(
        f"| {best_2d}, seed 2 | 90.50 | 98.76 |")
    assert sections["Fashion-MNIST, closed set"]["softmax only, seed 2"].endswith(
        "| not finished |")
    assert fashion[0]["dataset"] == "fashion-mnist" and \
        study.run_name(**fashion[0]) == "fashion-mnist-d2-lam0"
    assert fashion[4:] == study.fashion_runs(seed=2) and \
        study.run_name(**fashion[7]) == "fashion-mnist-open-d128-lam0.003-alpha0.5-lr0.005-seed2"
    for picture in ("fig3_lambda.png", "fig5_sensitivity.png", "fashion.png"):
        assert os.path.getsize(os.path.join(tmp_path, picture)) > 10_000


def test_omniglot_tables_and_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "OMNIGLOT_BEST_LAM", 0.01)
    figures = {"ver_accuracy": "97.00", "unseen_ver_accuracy": "88.50", "unseen_map_at_r": "41.25",
               "unseen_tar_all_1e-04": "20.10", "oneshot_error": "21.75",
               "oneshot_error_l2": "25.00"}
    for s, acc in ((study.omniglot_run(0), 70.0), (study.omniglot_run(0.01), 72.5),
                   (study.omniglot_run(0.01, k=10, seed=2), 99.0),
                   (study.omniglot_run(0, seed=2), 71.0),
                   (study.omniglot_run(0.1, epochs=study.OMNIGLOT_LONGER), 73.5)):
        name = study.run_name(**s)
        write_run(tmp_path, name, [acc] * study.max_epoch(name), figures)
    unfinished = study.run_name(**study.omniglot_run(0, k=10))
    write_run(tmp_path, unfinished, [99.0] * 14, figures)  # 14 of 900 epochs
    args = study.argparse.Namespace(runs_dir=str(tmp_path), out_dir=str(tmp_path))
    study.report(args)
    with open(os.path.join(tmp_path, "tables.md")) as f:
        tables = f.read()
    row = "| 70.00 | 97.00 | 88.50 | 41.25 | 20.10 | 21.75 | 25.00 | 0.00 |"
    assert "| 0 " + row in tables
    assert "| 0.01 " + row.replace("70.00", "72.50") in tables  # λ sweep
    assert "| 0.5 " + row.replace("70.00", "72.50") in tables  # α sweep: the same run
    assert "| 10, λ 0.01, α 0.5, seed 2 " + row.replace("70.00", "99.00") in tables
    assert "| 10, softmax only | — |" in tables  # unfinished runs are never quoted
    assert "| 0.1, 25 epochs " + row.replace("70.00", "73.50") in tables
    assert "| 0.01, 25 epochs | — |" in tables
    assert "| 964, softmax only, seed 2 " + row.replace("70.00", "71.00") in tables
    for picture in ("omniglot_fig5.png", "classes.png"):
        assert os.path.getsize(os.path.join(tmp_path, picture)) > 10_000


def test_lfw_tables_and_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "LFW_BEST_LAM", 0.003)
    figures = {"unseen_auc": "0.93000", "unseen_tar_at_far": "30.00", "unseen_map_at_r": "20.00",
               "unseen_tar_all_1e-03": "25.000", "unseen_tar_all_1e-04": "10.000",
               "lfw_threshold": "0.250000"}

    def write_lfw_run(s, ver, finished=True):
        name = study.run_name(**s)
        run_dir = write_run(tmp_path, name, [90.0] * s["epochs"],
                            dict(figures, unseen_ver_accuracy=ver), finished)
        os.rename(os.path.join(run_dir, "log_mnist.txt"), os.path.join(run_dir, "log_lfw.txt"))
        return run_dir
    write_lfw_run(study.lfw_run(0), "85.10")
    write_lfw_run(study.lfw_run(0.003), "86.30")
    write_lfw_run(study.lfw_run(0.01), "99.00", finished=False)  # never quoted
    for k in range(1, 11):  # softmax only and λ 0.003 on every fold, λ ahead by k/10 points
        write_lfw_run(study.lfw_run(0, split=f"fold{k}"), f"{80 + k:.2f}")
        write_lfw_run(study.lfw_run(0.003, split=f"fold{k}"), f"{80 + 1.1 * k:.2f}")
    for k, (alone, both) in enumerate([("90.00", "91.00"), ("92.00", "92.00")], 1):
        cosface = dict(head="cosface", lr=study.LFW_COSFACE_LR, split=f"fold{k}")
        write_lfw_run(study.lfw_run(0, **cosface), alone)
        write_lfw_run(study.lfw_run(0.003, **cosface), both)
    # A lever of the recipe, with its pair scores: 2 of 4 pairs right at its threshold 0.25,
    # 3 of 4 at the best threshold read off them (the oracle column).
    arcface = study.lfw_run(0.003, head="arcface", lr=study.LFW_COSFACE_LR,
                            epochs=study.LFW_RECIPE_EPOCHS)
    utils.save_pair_scores({"split": "view1", "threshold": 0.25, "pairs": [
        ["a_0001", "a_0002", 1, 0.9], ["b_0001", "c_0001", 0, 0.1], ["d_0001", "d_0002", 1, 0.2],
        ["e_0001", "f_0001", 0, 0.3]]}, os.path.join(write_lfw_run(arcface, "50.00"),
                                                      "pair_scores.json.gz"))
    study.report(study.argparse.Namespace(runs_dir=str(tmp_path), out_dir=str(tmp_path)))
    with open(os.path.join(tmp_path, "tables.md")) as f:
        tables = f.read()
    row = "| 0.9300 | 30.00 | 25.00 | 10.00 | 20.00 | 0.250 | 90.00 | 0.00 |"  # AUC flat
    assert "| ArcFace, lr 0.01: λ 0.003 | 50.00 " + row + " 75.00 |" in tables
    assert "| cosine schedule: softmax only | — |" in tables
    assert "| softmax only | 85.10 " + row in tables
    assert "| softmax + λ 0.003, α 0.5 | 86.30 " + row in tables
    assert "| softmax + λ 0.01, α 0.5 | — |" in tables
    folds = [80 + k for k in range(1, 11)]
    mean, se = 85.5, (sum((f - 85.5) ** 2 for f in folds) / 9) ** 0.5 / 10 ** 0.5
    assert (f"| softmax only | {mean:.2f} ± {se:.2f} | — | — | 10/10 | 0.9300 | 20.00 | 81.00 |"
            in tables)  # the means of AUC and MAP@R once all ten folds are in
    diffs = [0.1 * k for k in range(1, 11)]
    d_se = (sum((d - 0.55) ** 2 for d in diffs) / 9) ** 0.5 / 10 ** 0.5
    assert (f"| λ 0.003 | 86.05 ± {se * 1.1:.2f} | +0.55 ± {d_se:.2f} to softmax only "
            f"| 10 / 0 / 0 | 10/10 | 0.9300 | 20.00 | 81.10 |") in tables
    assert "| CosFace | — | — | 2 / 0 / 0 | 2/10 | — | — | 90.00 | 92.00 | — |" in tables
    # CosFace + λ is set against CosFace alone, on the folds both have, and never meaned early
    assert "| CosFace + λ 0.003 | — | — | 1 / 1 / 0 | 2/10 | — | — | 91.00 | 92.00 | — |" in tables
    assert os.path.getsize(os.path.join(tmp_path, "lfw.png")) > 10_000


def test_lfw_defaults_are_the_recipe_the_study_reports():
    """`python main.py -d lfw` alone trains the study's chosen face recipe."""
    def resolved(argv):
        args = main.get_parser().parse_args(argv)
        main.resolve_defaults(args, main.given_flags(argv))
        return vars(args)
    recipe = resolved(study.run_flags(**study.LFW_RECIPE_RUN))
    assert resolved(["-d", "lfw"]) == recipe
    assert recipe["weight_cent"] == study.LFW_BEST_LAM and recipe["center_update"] == "paper"
    # MNIST keeps the popular defaults; a flag given keeps its value.
    popular = resolved([])
    assert (popular["lr_model"], popular["weight_cent"], popular["max_epoch"]) == (0.001, 1, 100)
    assert resolved(["-d", "lfw", "--lr-model", "0.01"])["lr_model"] == 0.01


def test_view2_at_the_recipe(tmp_path, monkeypatch):
    """Empty until View 1 has chosen; then both arms on every fold with both seeds, and a
    table of seed-averaged folds: mean ± SE, the paired difference, the threshold-free means."""
    assert study.groups()["lfw-view2-recipe"] == []
    monkeypatch.setattr(study, "LFW_RECIPE_CHOSEN", True)
    runs = study.groups()["lfw-view2-recipe"]
    assert len(runs) == 2 * 10 * 2 and len({study.run_name(**r) for r in runs}) == 40
    recipe = {k: v for k, v in study.LFW_RECIPE_RUN.items() if k not in ("split", "seed")}
    assert {r["lam"] for r in runs} == {0, recipe["lam"]}
    for r in runs:
        assert {k: v for k, v in r.items() if k not in ("split", "seed", "lam")} == {
            k: v for k, v in recipe.items() if k != "lam"}
    figures = {"unseen_tar_at_far": "30.00", "unseen_tar_all_1e-04": "10.000",
               "lfw_threshold": "0.250000"}
    for r in runs:
        k, seed, lam = int(r["split"][4:]), r["seed"], r["lam"]
        acc = 80 + k + (2 if lam else 0) + (seed - 1) * (0.5 if k % 2 else -0.5)
        run_dir = write_run(tmp_path, study.run_name(**r), [90.0] * r["epochs"], dict(
            figures, unseen_ver_accuracy=f"{acc:.2f}", unseen_auc=f"{0.9 + 0.01 * seed:.5f}",
            **{"unseen_tar_all_1e-03": "25.000", "unseen_map_at_r": "20.00"}))
        os.rename(os.path.join(run_dir, "log_mnist.txt"), os.path.join(run_dir, "log_lfw.txt"))
    lines = study.lfw_view2_recipe_table(study.argparse.Namespace(runs_dir=str(tmp_path)))
    text = "\n".join(lines)
    folds = [80.25 + k if k % 2 else 79.75 + k for k in range(1, 11)]
    mean, se = evaluation.standard_error(folds)
    assert (f"| recipe, softmax-family only | {mean:.2f} ± {se:.2f} | — | — | 20/20 | 0.9150 "
            f"| 25.00 | 20.00 | " + " | ".join(f"{f:.2f}" for f in folds) + " |") in text
    assert f"| recipe + λ {recipe['lam']:g} | {mean + 2:.2f} ± {se:.2f} | +2.00 ± 0.00 | 10 / 0 / 0 | 20/20 |" in text
