"""main.py's evaluation of the features: retrieval and verification lines, metrics.csv
columns, --holdout-classes (open set), --evaluate, and resuming that cannot go wrong
quietly. End-to-end runs on the tiny IDX datasets of conftest.py."""
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch

import datasets
import evaluation
import main
import models
from conftest import ROOT
from test_main import FAST, NO_NETWORK, checkpoint, exit_line, metrics, read, run_main

RETRIEVAL = re.compile(r"^Retrieval, (.+?) \(cosine, (\d+) queries\): P@1 \(%\): (\d+\.\d\d)\t "
                       r"R-precision \(%\): (\d+\.\d\d)\t MAP@R \(%\): (\d+\.\d\d)$", re.M)
VERIFICATION = re.compile(r"^Verification, (.+?) \(cosine, 6000 pairs, 10 folds\): Accuracy "
                          r"\(%\): (\d+\.\d\d) \+- (\d+\.\d\d)\t AUC: (\d\.\d{4})\t "
                          r"TAR@FAR=1e-3 \(%\): (\d+\.\d\d)$", re.M)


def test_every_evaluation_reports_retrieval_and_verification(tmp_path, tiny_data, capsys):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "2")
    out = capsys.readouterr().out
    retrieval, verification = RETRIEVAL.findall(out), VERIFICATION.findall(out)
    assert len(retrieval) == len(verification) == 2  # one of each per evaluation
    assert all(r[0] == "test set" and r[1] == "128" for r in retrieval)
    # Each line comes right after the popular script's two lines, which stay unchanged.
    lines = out.splitlines()
    i = next(j for j, l in enumerate(lines) if l.startswith("Accuracy (%)"))
    assert lines[i + 1].startswith("Intra-class spread") and lines[i + 2].startswith("Retrieval")

    # The saved features are the evaluated ones: recomputing gives the printed figures.
    saved = torch.load(os.path.join(save_dir, "test_features.pt"), weights_only=True)
    assert saved["features"].shape == (128, 2) and saved["epoch"] == 2
    assert saved["classes"] == [str(d) for d in range(10)] and saved["num_seen"] == 10
    assert saved["centers"].shape == (10, 2)
    r = evaluation.retrieval_metrics(saved["features"], saved["labels"])
    assert f"{100 * r['precision_at_1']:.2f}" == retrieval[-1][2]
    assert f"{100 * r['map_at_r']:.2f}" == retrieval[-1][4]
    pairs = evaluation.verification_pairs(saved["labels"], 6000, seed=0)
    v = evaluation.verification_metrics(saved["features"], saved["labels"], pairs)
    assert f"{100 * v['accuracy']:.2f}" == verification[-1][1]
    assert f"{v['auc']:.4f}" == verification[-1][3]

    rows = metrics(save_dir)
    assert [r["map_at_r"] for r in rows] == [r[4] for r in retrieval]
    assert [r["ver_accuracy"] for r in rows] == [v[1] for v in verification]
    assert [r["tar_at_far"] for r in rows] == [v[4] for v in verification]
    assert not any(k.startswith("unseen_") for k in rows[0])  # no held-out classes
    assert os.path.getsize(os.path.join(save_dir, "roc.png")) > 0


def test_holdout_classes_open_set(tmp_path, tiny_data, capsys):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "1", "--holdout-classes", "9,6,7,8",
                        "--plot")
    out = capsys.readouterr().out
    data = datasets.create("mnist", 64, False, root=tiny_data)  # all classes, unremapped
    seen_train = int((data.trainloader.labels < 6).sum())
    assert (f"Held-out classes 6,7,8,9 (6, 7, 8, 9): not trained on, evaluated as unseen "
            f"classes; training on {seen_train} images of classes 0,1,2,3,4,5") in out

    ckpt = checkpoint(save_dir)
    assert ckpt["holdout_classes"] == [6, 7, 8, 9]
    assert ckpt["model"]["fc2.weight"].shape == (6, 2)  # a classifier of the seen classes only
    assert ckpt["center_loss"]["centers"].shape == (6, 2)

    # Accuracy is over the seen test classes: recompute it with the checkpoint's model.
    model = models.create("cnn", 6)
    model.load_state_dict(ckpt["model"])
    model.eval()
    images, labels = data.testloader.images, data.testloader.labels
    x = (images.unsqueeze(1).float() / 255 - 0.1307) / 0.3081
    with torch.no_grad():
        predicted = model(x)[1].argmax(1)
    seen = labels < 6
    expected = round((predicted[seen] == labels[seen]).sum().item() * 100. / int(seen.sum()), 2)
    assert f"Accuracy (%): {expected}\t" in out

    retrieval = RETRIEVAL.findall(out)
    assert [(r[0], int(r[1])) for r in retrieval] == [
        ("seen classes", int(seen.sum())), ("unseen classes 6,7,8,9", int((~seen).sum()))]
    assert [v[0] for v in VERIFICATION.findall(out)] == ["seen classes", "unseen classes 6,7,8,9"]

    saved = torch.load(os.path.join(save_dir, "test_features.pt"), weights_only=True)
    assert saved["num_seen"] == 6 and saved["holdout_classes"] == [6, 7, 8, 9]
    assert saved["classes"] == ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    # Held-out test images keep their own classes, relabelled after the seen ones.
    torch.testing.assert_close(saved["labels"], labels)
    unseen = saved["labels"] >= 6
    r = evaluation.retrieval_metrics(saved["features"][unseen], saved["labels"][unseen])
    row = metrics(save_dir)[0]
    assert row["unseen_map_at_r"] == f"{100 * r['map_at_r']:.2f}" == retrieval[1][4]
    assert all(0 <= float(row[k]) <= 100 for k in row if k.startswith("unseen_")
               and k != "unseen_auc")
    assert os.path.exists(os.path.join(save_dir, "test", "epoch_1.png"))


def test_holdout_by_fashion_mnist_names(tmp_path, tiny_data):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "1", "-d", "fashion-mnist",
                        "--holdout-classes", "coat,Shirt")
    saved = torch.load(os.path.join(save_dir, "test_features.pt"), weights_only=True)
    assert saved["holdout_classes"] == [4, 6]
    assert saved["classes"][-2:] == ["Coat", "Shirt"]
    assert "unseen classes 4,6" in read(os.path.join(save_dir, "log_fashion-mnist.txt"))


@pytest.mark.parametrize("value, fragment", [
    ("10", "10 is not a class of mnist; use indices 0-9"),
    ("3", "hold out at least 2 classes"),
    ("0,1,2,3,4,5,6,7,8", "leaves 1 class to train on"),
    ("Cat,Dog", "Cat, Dog is not a class of mnist"),
])
def test_bad_holdout_classes(value, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        main.main(["--holdout-classes", value])
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


def test_evaluate_trains_and_writes_nothing_into_the_checkpoint(tmp_path, tiny_data, capsys):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "2", "--holdout-classes", "6,7,8,9")
    path = os.path.join(save_dir, "checkpoint.pth.tar")
    before = read_bytes(path), read(os.path.join(save_dir, "metrics.csv"))
    trained_log = read(os.path.join(save_dir, "log_mnist.txt"))
    # --holdout-classes, like --dataset, --feat-dim ..., comes from the checkpoint.
    capsys.readouterr()
    main.main(["--data-root", tiny_data, "--use-cpu", "--save-dir", save_dir,
               "--evaluate", "--resume", path, "--plot"])
    out = capsys.readouterr().out
    assert f"Evaluating {path} (epoch 2); nothing is trained" in out
    assert "==> Epoch" not in out and "Batch" not in out
    # The same model on the same test set: the same figures as the last training evaluation.
    figures = re.compile(r"^(Accuracy|Retrieval|Verification).*$", re.M)
    # One evaluation's 11 lines: accuracy, then for the seen and the unseen classes
    # retrieval and verification by cosine and by L2, and all pairs' verification.
    assert figures.findall(out) == figures.findall(trained_log)[-11:]
    assert (read_bytes(path), read(os.path.join(save_dir, "metrics.csv"))) == before
    assert os.path.exists(os.path.join(save_dir, "evaluate_test_epoch_2.png"))
    assert read(os.path.join(save_dir, "log_mnist.txt")).startswith(trained_log)  # appended
    # A flag given that contradicts the checkpoint is refused, as when resuming.
    assert "--holdout-classes 6,7,8,9 (now 5,6,7,8,9)" in exit_line(
        "--data-root", tiny_data, "--use-cpu", "--save-dir", save_dir, "--evaluate",
        "--resume", path, "--holdout-classes", "5,6,7,8,9")


def test_evaluate_needs_resume(tmp_path):
    assert exit_line("--evaluate", "--save-dir", str(tmp_path)) == \
        "error: --evaluate needs --resume CHECKPOINT, the model to evaluate"


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"", None])
def test_resume_from_a_file_that_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content is None:  # a real torch file, but a bare state_dict
        torch.save(models.create("cnn", 10).state_dict(), path)
    else:
        path.write_bytes(content)
    line = exit_line("--resume", str(path), "--save-dir", str(tmp_path / "log"), "--use-cpu")
    assert line.startswith(f"error: --resume {path} is not a checkpoint of main.py")
    assert "weights_only" not in line
    assert not os.path.exists(tmp_path / "log")  # nothing written


def test_resume_with_other_flags_names_each_one(tmp_path, tiny_data):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "1")
    path = os.path.join(save_dir, "checkpoint.pth.tar")
    before = read(os.path.join(save_dir, "log_mnist.txt"))
    line = exit_line("--data-root", tiny_data, "--use-cpu", "--save-dir", save_dir, "--resume", path,
                     "-d", "fashion-mnist", "--feat-dim", "3", "--holdout-classes", "0,1")
    assert line == (f"error: --resume {path} was made with --dataset mnist (now fashion-mnist); "
                    f"--feat-dim 2 (now 3); --holdout-classes none (now 0,1): pass the "
                    f"checkpoint's values, or leave out --resume to start a new run")
    assert exit_line("--data-root", tiny_data, "--use-cpu", "--save-dir", save_dir, "--resume",
                     path, "--center-update", "paper").startswith(
        f"error: --resume {path} was made with --center-update grad (now paper):")
    assert read(os.path.join(save_dir, "log_mnist.txt")) == before  # the log is untouched


def test_ctrl_c_says_what_is_saved_and_how_to_continue(tmp_path, micro_data, capsys):
    save_dir = str(tmp_path / "run")
    flags = ["--data-root", micro_data, *FAST, "--batch-size", "16", "--print-freq", "1",
             "--max-epoch", "2", "--save-dir", save_dir]
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "main.py"), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **NO_NETWORK})
    seen_epoch2 = False
    for line in proc.stdout:  # interrupt in the middle of epoch 2
        seen_epoch2 |= line.startswith("==> Epoch 2/2")
        if seen_epoch2 and line.startswith("Batch 2/4"):
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    path = os.path.join(save_dir, "checkpoint.pth.tar")
    assert f"Interrupted. The checkpoint of epoch 1 is in {path}; continue with:" in rest
    command = rest.strip().splitlines()[-1].strip()
    assert command == shlex.join(["python", "main.py", *flags, "--resume", path])
    assert checkpoint(save_dir)["epoch"] == 1

    words = shlex.split(command)
    main.main(words[2:])  # the printed command's flags, as they are
    assert f"Resumed from {path} at epoch 1" in capsys.readouterr().out
    assert checkpoint(save_dir)["epoch"] == 2


def test_ctrl_c_before_the_first_checkpoint(tmp_path, micro_data):
    save_dir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "main.py"), "--data-root",
                             micro_data, *FAST, "--batch-size", "16", "--print-freq", "1",
                             "--max-epoch", "1", "--save-dir", save_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **NO_NETWORK})
    for line in proc.stdout:
        if line.startswith("Batch 1/4"):
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "Interrupted before the first epoch ended: no checkpoint was saved." in rest
    assert not os.path.exists(os.path.join(save_dir, "checkpoint.pth.tar"))


def test_ctrl_c_message_names_the_checkpoint_on_disk():
    """Resumed into another --save-dir and interrupted before an epoch ended there: the
    checkpoint on disk is still the one resumed from, and the command says so once."""
    argv = ["--save-dir", "new", "--resume", "old/checkpoint.pth.tar", "--plot"]
    args = main.get_parser().parse_args(argv)
    message = main.interrupted_message(args, argv, 3, "old/checkpoint.pth.tar")
    assert message == ("Interrupted. The checkpoint of epoch 3 is in old/checkpoint.pth.tar; "
                       "continue with:\n  python main.py --save-dir new --plot --resume "
                       "old/checkpoint.pth.tar")
    argv = ["--resume=x.pth.tar", "--save-dir", "my runs"]  # a space: quoted for the shell
    args = main.get_parser().parse_args(argv)
    assert main.interrupted_message(args, argv, 1, "my runs/checkpoint.pth.tar").endswith(
        "python main.py --save-dir 'my runs' --resume 'my runs/checkpoint.pth.tar'")
