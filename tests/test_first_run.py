"""What a new user meets first: -h with every default and every dataset, the
Args: line of their own settings, --evaluate writing beside its checkpoint, and a
user's run at the top of log/ kept out of git beside the committed reference runs."""
import os
import shutil
import subprocess

import pytest

import datasets
import main
from conftest import ROOT
from test_main import cli, read, run_main


def shown_default(action):
    if action.default is False:
        return "off"
    return "none" if action.default in ("", None) else str(action.default)


def test_help_shows_every_default_and_names_every_dataset():
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

    result = cli("-h")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--max-epoch MAX_EPOCH epochs to train (default: 100)" in text
    assert "--lr-model LR_MODEL learning rate for model (default: 0.001)" in text
    assert "--plot plot features every epoch, and GIFs (default: off)" in text


def test_args_line_shows_the_users_settings_and_evaluate_only_what_applies(
        tmp_path, tiny_data, monkeypatch):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "1", "--holdout-classes", "8,9")
    args_line = read(os.path.join(save_dir, "log_mnist.txt")).splitlines()[1]
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
    assert written == {"checkpoint.pth.tar", "log_mnist.txt", "roc.png", "test_features.pt",
                       "evaluate_test_epoch_1.png"}, written
    args_line = read(elsewhere / "log_mnist.txt").splitlines()[1]
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
             "log/checkpoint.pth.tar", "log/evaluate_test_epoch_2.png"]
    # The reference runs, each in its own folder, and a user's run in a folder named so.
    kept = ["log/README.md", "log/center/log_mnist.txt", "log/center/metrics.csv",
                 "log/center/curves.png", "log/study/mnist-d2-lam0/roc.png",
                 "log/study/mnist-d2-lam0/test_features.pt", "log/study/fig3_lambda.png",
                 "log/study/tables.md", "log/mine/log_mnist.txt"]
    ignored = lambda path: git("check-ignore", "-q", "--no-index", path).returncode == 0
    assert [p for p in users if not ignored(p)] == []
    assert [p for p in kept if ignored(p)] == []
    # No tracked file anywhere matches an ignore rule.
    tracked_but_ignored = git("ls-files", "--cached", "--ignored", "--exclude-standard")
    assert tracked_but_ignored.returncode == 0 and tracked_but_ignored.stdout == ""
