"""What a new user meets first: -h with every default and every dataset, the
Args: line of their own settings, --evaluate writing beside its checkpoint, a user's
run at the top of log/ kept out of git beside the committed reference runs; a console
that says how long each epoch took and where the outputs went, frames titled for what
they show, and error lines in words that leave nothing behind."""
import csv
import os
import re
import shutil
import subprocess

import pytest
import torch

import datasets
import main
import utils
from conftest import ROOT
from test_main import NO_NETWORK, read, run_main


def shown_default(action):
    if action.default is False:
        return "off"
    return "none" if action.default in ("", None) else str(action.default)


def test_help_shows_every_default_and_names_every_dataset(capsys):
    parser = main.get_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        formatter = parser._get_formatter()  # this one flag's block of -h
        formatter.add_argument(action)
        block = " ".join(formatter.format_help().split())
        assert f"(default: {shown_default(action)})" in block, block
    description = " ".join(parser.description.split())
    choices = next(a.choices for a in parser._actions if a.dest == "dataset")
    assert set(choices) >= set(datasets.DATASETS)
    assert all(name in description for name in choices), description

    with pytest.raises(SystemExit) as exc:
        main.main(["-h"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-epoch MAX_EPOCH epochs to train (-d lfw: 40) (default: 100)" in text
    assert "--lr-model LR_MODEL learning rate for model (-d lfw: 0.1) (default: 0.001)" in text
    # Every value of -d lfw's recipe is shown beside its flag's default.
    for key, value in main.LFW_RECIPE.items():
        flag = "--" + key.replace("_", "-")
        assert re.search(re.escape(flag) + r" [A-Z_{,}a-z]+ [^-]*?-d lfw: " + re.escape(
            f"{value:g}" if isinstance(value, float) else str(value)) + r"\b", text), flag
    assert "--plot plot features every epoch, and GIFs (default: off)" in text


def test_args_line_shows_the_users_settings_and_evaluate_only_what_applies(
        tmp_path, tiny_data, monkeypatch):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "1", "--holdout-classes", "8,9")
    args_line = read(os.path.join(save_dir, "log_mnist.txt")).splitlines()[3]
    assert args_line.startswith("Args:Namespace(dataset='mnist', workers=4, batch_size=64, ")
    assert "max_epoch=1" in args_line and "holdout_classes='8,9'" in args_line
    assert "holdout=" not in args_line and "channels_last" not in args_line  # internal

    # --evaluate without --save-dir: everything beside the checkpoint, nothing in ./log.
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(os.path.join(save_dir, "checkpoint.pth.tar"), elsewhere)
    main.main(["--data-root", tiny_data, "--use-cpu", "--evaluate", "--plot",
               "--resume", os.path.join("elsewhere", "checkpoint.pth.tar")])
    assert not os.path.exists(tmp_path / "log")
    written = set(os.listdir(elsewhere))
    assert written == {"checkpoint.pth.tar", "log_mnist.txt", "run.json", "roc.png",
                       "test_features.pt", "evaluate_test_epoch_1.png"}, written
    args_line = read(elsewhere / "log_mnist.txt").splitlines()[3]
    assert args_line.startswith("Args:Namespace(") and "evaluate=True" in args_line
    assert "save_dir='elsewhere'" in args_line and "holdout_classes='8,9'" in args_line
    for flag in main.TRAINING_ONLY + main.INTERNAL:  # max_epoch, eval_freq, lr_model, ...
        assert f"{flag}=" not in args_line, flag
    assert "Evaluating elsewhere/checkpoint.pth.tar (epoch 1)" in read(elsewhere / "log_mnist.txt")


def git(*words):
    return subprocess.run(["git", "-C", ROOT, *words], capture_output=True, text=True)


@pytest.mark.skipif(git("rev-parse", "--is-inside-work-tree").returncode != 0,
                    reason="not a git checkout")
def test_a_users_run_at_the_top_of_log_is_ignored_the_committed_runs_are_not():
    users = ["log/log_mnist.txt", "log/log_fashion-mnist.txt", "log/metrics.csv",
             "log/curves.png", "log/roc.png", "log/test_features.pt", "log/train.gif",
             "log/test.gif", "log/train/epoch_1.png", "log/test/epoch_3.png",
             "log/checkpoint.pth.tar", "log/evaluate_test_epoch_2.png", "log/run.json",
             "log/pair_scores.json.gz"]
    # The reference runs, each in its own folder, and a user's run in a folder named so.
    kept = ["log/README.md", "log/runs.csv", "log/popular/center/log_mnist.txt",
            "log/popular/center/metrics.csv", "log/popular/center/run.json",
            "log/study/mnist-d2-lam0/test_features.pt", "log/study/fig3_lambda.png",
            "log/study/lfw-fold1-lam0-min2/pair_scores.json.gz",
            "log/study/tables.md", "log/mine/log_mnist.txt"]
    # What one command redraws, and the MB of an LFW run's features: not committed.
    users += ["log/popular/center/curves.png", "log/study/mnist-d2-lam0/roc.png",
              "log/study/lfw-fold1-lam0-min2/test_features.pt",
              "log/study/omniglot-d128-lam0/test_features.pt"]
    ignored = lambda path: git("check-ignore", "-q", "--no-index", path).returncode == 0
    assert [p for p in users if not ignored(p)] == []
    assert [p for p in kept if ignored(p)] == []
    # No tracked file anywhere matches an ignore rule.
    tracked_but_ignored = git("ls-files", "--cached", "--ignored", "--exclude-standard")
    assert tracked_but_ignored.returncode == 0 and tracked_but_ignored.stdout == ""


# ------------------------------------------------------------------------- the console

@pytest.fixture(scope="module")
def plotted_run(tmp_path_factory, micro_data):
    """Two epochs with --plot, as the README's command gives them (no --use-cpu) on a
    machine without CUDA: the save dir, the log's lines and the scatter frames' titles."""
    save_dir = str(tmp_path_factory.mktemp("console") / "run")
    titles, plot = [], utils.plot_features
    with pytest.MonkeyPatch.context() as mp:
        # main.py sets CUDA_VISIBLE_DEVICES from --gpu: restored afterwards
        mp.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "0"))
        mp.setattr(torch.cuda, "is_available", lambda: False)
        mp.setattr(utils, "plot_features", lambda *a, **k: titles.append(a[4]) or plot(*a, **k))
        # drawn here, where the titles are caught (test_plots: the same bytes as drawn apart)
        mp.setattr(main, "PLOTS_IN_BACKGROUND", False)
        main.main(["--data-root", micro_data, "--save-dir", save_dir, "--batch-size", "32",
                   "--eval-freq", "1", "--max-epoch", "2", "--plot"])
    return save_dir, read(os.path.join(save_dir, "log_mnist.txt")).splitlines(), titles


def test_without_cuda_the_readme_command_trains_on_the_cpu(plotted_run):
    _, lines, _ = plotted_run
    assert "use_cpu=False" in lines[3] and lines[5] == "Currently using CPU"


def test_each_epoch_prints_its_time(plotted_run):
    save_dir, lines, _ = plotted_run
    first = lines.index("==> Epoch 1/2")
    second = lines.index("==> Epoch 2/2")
    timed = [(i, line) for i, line in enumerate(lines) if re.match(r"Epoch \d/2 took ", line)]
    assert [i for i, _ in timed] == [second - 1, len(lines) - 3]  # each at its epoch's end
    assert first < timed[0][0]
    m = re.fullmatch(r"Epoch 1/2 took (\d+\.\d) s; 1 epoch left: about (\d+):(\d\d):(\d\d) "
                     r"\(h:m:s\) at this pace", timed[0][1])
    assert m and int(m[2]) * 3600 + int(m[3]) * 60 + int(m[4]) == round(float(m[1]))
    m2 = re.fullmatch(r"Epoch 2/2 took (\d+\.\d) s", timed[1][1])  # nothing left to estimate
    assert m2
    # The whole epoch: at least the training and test time metrics.csv records.
    with open(os.path.join(save_dir, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    for match, row in zip((m, m2), rows):
        assert float(match[1]) >= float(row["epoch_time_s"]) - 0.1
    assert main.epoch_time_line(0, 100, 204.0) == \
        "Epoch 1/100 took 204.0 s; 99 epochs left: about 5:36:36 (h:m:s) at this pace"


def test_the_last_line_names_every_output(plotted_run, tmp_path):
    save_dir, lines, _ = plotted_run
    assert lines[-2].startswith("Finished. Total elapsed time (h:m:s): ")
    assert lines[-1] == (f"Outputs in {save_dir}/: log_mnist.txt, checkpoint.pth.tar, "
                         f"metrics.csv, run.json, curves.png, roc.png, test_features.pt, train.gif, "
                         f"test.gif (one frame per epoch in train/ and test/)")
    named = lines[-1].split(": ", 1)[1].split(" (")[0].split(", ")
    assert sorted(os.listdir(save_dir)) == sorted(named + ["train", "test"])

    # --evaluate beside a copy of the checkpoint: what it wrote there, nothing else.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(os.path.join(save_dir, "checkpoint.pth.tar"), elsewhere)
    data_root = re.search(r"data_root='([^']*)'", lines[3])[1]
    main.main(["--data-root", data_root, "--use-cpu", "--evaluate", "--plot",
               "--resume", str(elsewhere / "checkpoint.pth.tar")])
    last = read(elsewhere / "log_mnist.txt").splitlines()[-1]
    assert last == (f"Outputs in {elsewhere}/: log_mnist.txt, run.json, roc.png, "
                    f"test_features.pt, evaluate_test_epoch_2.png")
    assert sorted(os.listdir(elsewhere)) == sorted(last.split(": ", 1)[1].split(", ")
                                                   + ["checkpoint.pth.tar"])


def test_training_frames_are_not_titled_with_a_test_figure(plotted_run):
    _, _, titles = plotted_run
    train = [t for t in titles if "training features" in t]
    test = [t for t in titles if "test features" in t]
    assert len(train) == len(test) == 2 and len(titles) == 4
    assert all("test" not in t and "accuracy" not in t for t in train), train
    assert all(re.search(r"test accuracy \d+\.\d\d%", t) for t in test), test


# ------------------------------------------------------------------------- error lines

# A Python exception's class name, which a user cannot act on: "(RuntimeError)", "KeyError".
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Warning)\b")


class NotTensors:
    """Pickled into a file that weights_only loading refuses."""


def offline_error(monkeypatch, *flags):
    """main.py's one error line for these flags, with every download failing at once."""
    for key, value in NO_NETWORK.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exc:
        main.main(["--use-cpu", *flags])
    assert isinstance(exc.value.code, str) and "\n" not in exc.value.code
    return exc.value.code


@pytest.mark.parametrize("case, wrong, todo", [
    ("mnist", "cannot download it (the download failed", "or pass --data-root"),
    ("omniglot", "cannot download it (the download failed", "or pass --data-root"),
    ("one-shot", "cannot download them (the download failed", "put all_runs.zip"),
    ("text", "torch.save did not write it", "pass the checkpoint.pth.tar"),
    ("empty", "the file is empty", "pass the checkpoint.pth.tar"),
    ("cut short", "the file is cut short", "pass the checkpoint.pth.tar"),
    ("objects", "holds objects other than tensors", "pass the checkpoint.pth.tar"),
])
def test_error_lines_say_in_words_what_is_wrong_and_what_to_do(
        case, wrong, todo, tmp_path, tiny_data, tiny_omniglot, monkeypatch):
    out = ["--save-dir", str(tmp_path / "out")]
    path = tmp_path / "file.pth.tar"
    if case == "mnist":
        flags = ["--data-root", str(tmp_path / "nowhere")]
    elif case == "omniglot":
        flags = ["-d", "omniglot", "--data-root", str(tmp_path / "nowhere")]
    elif case == "one-shot":
        root = tmp_path / "root"
        shutil.copytree(tiny_omniglot, root)
        shutil.rmtree(root / "omniglot-one-shot")
        flags = ["-d", "omniglot", "--data-root", str(root)]
    else:
        if case == "text":
            path.write_text("epoch 3, accuracy 99.1\n")
        elif case == "empty":
            path.write_bytes(b"")
        elif case == "cut short":  # as a copy that did not finish leaves it
            torch.save({"epoch": 1, "model": {"w": torch.zeros(1000)}}, path)
            path.write_bytes(path.read_bytes()[:2000])
        else:
            torch.save({"epoch": NotTensors()}, path)
        flags = ["--data-root", tiny_data, "--resume", str(path)]
    line = offline_error(monkeypatch, *flags, *out)
    assert not CLASS_NAME.search(line), line
    assert line.startswith("error: ") and wrong in line and todo in line, line


def test_a_failed_download_leaves_no_folders_behind(tmp_path, tiny_omniglot, monkeypatch):
    for key, value in NO_NETWORK.items():
        monkeypatch.setenv(key, value)
    # A data root that did not exist: gone again, with the parent it needed.
    with pytest.raises(FileNotFoundError):
        datasets.create("mnist", 64, False, root=str(tmp_path / "new" / "data"))
    assert not os.path.exists(tmp_path / "new")
    # One that existed, with a user's file: as it was.
    mine = tmp_path / "mine"
    (mine / "FashionMNIST").mkdir(parents=True)
    (mine / "FashionMNIST" / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError):
        datasets.create("fashion-mnist", 64, False, root=str(mine))
    assert os.listdir(mine) == ["FashionMNIST"]
    assert os.listdir(mine / "FashionMNIST") == ["notes.txt"]
    # Omniglot's images, and Lake et al.'s zip beside images that are there.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError):
        datasets.create("omniglot", 64, False, root=str(empty))
    assert os.listdir(empty) == []
    root = tmp_path / "omniglot"
    shutil.copytree(tiny_omniglot, root)
    shutil.rmtree(root / "omniglot-one-shot")
    with pytest.raises(FileNotFoundError):
        datasets.create("omniglot", 64, False, root=str(root))
    assert os.listdir(root) == ["omniglot-py"]
