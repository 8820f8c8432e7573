"""End-to-end runs of main.py on tiny IDX datasets written by conftest.py."""
import csv
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from PIL import Image

import datasets
import main
import models
import utils
from center_loss import CenterLoss
from conftest import ROOT

# Tiny runs: 256 training images in batches of 64 (4 batches), 128 test images.
FAST = ["--batch-size", "64", "--print-freq", "2", "--eval-freq", "1", "--use-cpu"]
# No test may download: an unreachable proxy makes torchvision fail at once.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def run_main(tmp_path, data, *flags, name="run"):
    save_dir = str(tmp_path / name)
    main.main(["--data-root", data, "--save-dir", save_dir, *FAST, *flags])
    return save_dir


def read(path):
    with open(path) as f:
        return f.read()


def checkpoint(save_dir):
    return utils.load_checkpoint(os.path.join(save_dir, "checkpoint.pth.tar"), "cpu")


def metrics(save_dir):
    with open(os.path.join(save_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **NO_NETWORK})


def exit_line(*argv):
    """main.main's refusal of bad input, in-process (a subprocess costs seconds of imports):
    sys.exit with a message, which Python prints to stderr as its one line, with status 1
    and no traceback. test_missing_dataset_is_one_clear_line checks that through the CLI."""
    with pytest.raises(SystemExit) as exc:
        main.main(list(argv))
    assert isinstance(exc.value.code, str), exc.value.code
    assert "\n" not in exc.value.code, exc.value.code
    return exc.value.code


def test_log_plots_checkpoint_metrics(tmp_path, tiny_data, capsys):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "2", "--plot")
    out = capsys.readouterr().out
    log = read(os.path.join(save_dir, "log_mnist.txt"))
    assert log == out  # everything printed goes to the log
    lines = log.splitlines()
    # How the run was made, in words, then the popular script's console from its first line.
    record = run_record(save_dir)
    assert lines[0] == f"Command: {record['command']}  (in {record['cwd']})"
    assert lines[1].startswith(f"Made with torch {torch.__version__}, Python ")
    lines = lines[2:]
    assert lines[0] == "==========" and lines[1].startswith("Args:Namespace(")
    assert lines[3:6] == ["Currently using CPU", "Creating dataset: mnist", "Creating model: cnn"]
    assert "==> Epoch 1/2" in lines and "==> Epoch 2/2" in lines
    batch = [l for l in lines if l.startswith("Batch ")]
    assert len(batch) == 4 and batch[0].startswith("Batch 2/4\t Loss ")
    num = r"(\d+\.\d{6})"
    assert re.fullmatch(rf"Batch 2/4\t Loss {num} \({num}\) XentLoss {num} \({num}\) "
                        rf"CenterLoss {num} \({num}\)", batch[0])
    acc = [l for l in lines if l.startswith("Accuracy")]
    assert len(acc) == 2 and lines.count("==> Test") == 2
    m = re.fullmatch(r"Accuracy \(%\): (\d+\.?\d*)\t Error rate \(%\): (\d+\.?\d*)", acc[0])
    assert m and abs(float(m[1]) + float(m[2]) - 100) < 1e-9
    assert re.fullmatch(r"Finished\. Total elapsed time \(h:m:s\): 0:00:\d\d", lines[-2])
    assert lines[-1].startswith(f"Outputs in {save_dir}/: log_mnist.txt, ")

    for split in ("train", "test"):
        for epoch in (1, 2):
            with Image.open(os.path.join(save_dir, split, f"epoch_{epoch}.png")) as im:
                assert im.format == "PNG" and im.size[0] >= 400
        with Image.open(os.path.join(save_dir, f"{split}.gif")) as gif:
            assert gif.n_frames == 2

    ckpt = checkpoint(save_dir)
    assert ckpt["epoch"] == 2 and ckpt["args"]["max_epoch"] == 2
    assert set(ckpt) >= {"model", "center_loss", "optimizer_model", "optimizer_cent",
                         "scheduler", "shuffle_rng", "cpu_rng"}
    rows = metrics(save_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[0]["accuracy"]) == float(m[1])
    assert all(float(r["intra"]) > 0 and float(r["inter"]) > 0 for r in rows)
    ratio = float(rows[0]["intra"]) / float(rows[0]["inter"])
    assert abs(float(rows[0]["ratio"]) - ratio) < 1e-4 * ratio
    assert os.path.getsize(os.path.join(save_dir, "curves.png")) > 0
    assert not [f for f in os.listdir(save_dir) if f.endswith(".tmp")]


def run_record(save_dir):
    with open(os.path.join(save_dir, "run.json")) as f:
        return json.load(f)


def test_a_run_records_how_it_was_made(tmp_path, tiny_data, monkeypatch):
    """run.json: a pasteable command with the paths as given, versions, device, commit,
    start and wall time; a resume adds an entry of its own."""
    monkeypatch.chdir(ROOT)
    save_dir = os.path.relpath(tmp_path / "run", ROOT)  # given relative: kept relative
    flags = ["--data-root", tiny_data, "--save-dir", save_dir, *FAST, "--weight-cent", "0.5"]
    main.main(flags + ["--max-epoch", "1"])
    record = run_record(save_dir)
    assert record["command"] == shlex.join(["python", "main.py", *flags, "--max-epoch", "1"])
    assert shlex.split(record["command"])[2:] == flags + ["--max-epoch", "1"]
    assert record["cwd"] == "." and record["kind"] == "train"
    assert record["torch"] == torch.__version__
    assert record["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    threads = torch.get_num_threads()
    assert record["device"].startswith("CPU: ") and record["device"].endswith(
        f", {threads} thread" + ("s" if threads > 1 else ""))
    assert record["processes"] == 1 and record["precision"] == "fp32"
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:  # a checkout (CI's clean clone is one)
        assert record["commit"] == head.stdout.strip() and isinstance(record["dirty"], bool)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", record["start"])
    assert record["outcome"] == "finished" and 0 < record["wall_s"] < 600
    with open(os.path.join(save_dir, "log_mnist.txt")) as f:
        first = f.read().splitlines()[:2]
    assert first[0] == f"Command: {record['command']}  (in .)"
    assert first[1].startswith(f"Made with torch {record['torch']}, Python {record['python']}, "
                               f"{record['device']}, fp32; ")
    # Resumed: the first entry stays, the resume is added with its own command.
    resume = ["--resume", os.path.join(save_dir, "checkpoint.pth.tar")]
    main.main(flags + ["--max-epoch", "2"] + resume)
    again = run_record(save_dir)
    assert {k: v for k, v in again.items() if k != "later"} == record
    assert len(again["later"]) == 1 and again["later"][0]["kind"] == "resume"
    assert again["later"][0]["command"].endswith(shlex.join(resume))
    assert again["later"][0]["outcome"] == "finished"


def test_cosine_schedule_moves_the_models_rate_only(tmp_path, tiny_data):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "3", "--lr-model", "0.1",
                        "--lr-schedule", "cosine", "--lr-cent", "0.3")
    lrs = [float(r["lr_model"]) for r in metrics(save_dir)]  # each epoch's rate
    assert lrs == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])
    ckpt = checkpoint(save_dir)
    assert ckpt["optimizer_cent"]["param_groups"][0]["lr"] == 0.3
    # Resuming with the other schedule would load one scheduler's state into another.
    code = exit_line("--data-root", tiny_data, "--save-dir", save_dir, *FAST, "--max-epoch", "4",
                     "--resume", os.path.join(save_dir, "checkpoint.pth.tar"))
    assert "--lr-schedule cosine (now step)" in code


def test_weight_cent_warmup_ramps_lambda_not_the_centers_pace(tiny_data):
    args = main.get_parser().parse_args(["--use-cpu", "--weight-cent", "0.4",
                                         "--weight-cent-warmup", "4", "--center-update", "paper"])
    assert [main.weight_cent_at(args, e) for e in range(6)] == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    args.weight_cent_warmup = 0
    assert main.weight_cent_at(args, 0) == 0.4
    data = datasets.create("mnist", 64, False, root=tiny_data, seed=3)
    batch = next(iter(data.trainloader))
    results = []
    for lam in (0.1, 0.4):  # the same model, batch and centers; lambda differs
        torch.manual_seed(0)
        model = models.create("cnn", num_classes=10)
        cent = CenterLoss(10, 2, use_gpu=False, update="paper")
        opt_m = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        opt_c = torch.optim.SGD(cent.parameters(), lr=0.5)
        _, values = main.train_step(model, nn.CrossEntropyLoss(), cent, opt_m, opt_c, *batch,
                                    args, weight_cent=lam)
        results.append((values.tolist(), cent.centers.detach().clone()))
    (v1, c1), (v4, c4) = results
    assert v4[2] == pytest.approx(4 * v1[2], rel=1e-5)  # the logged lambda * center loss
    assert torch.allclose(c1, c4, atol=1e-6)  # eq. 4 moves the centers at alpha whatever lambda


def test_training_matches_popular_loop(tiny_data):
    """main.train on two batches equals the popular script's loop written out by hand."""
    args = main.get_parser().parse_args(["--use-cpu", "--weight-cent", "0.5"])
    args.print_freq = 1000
    data = datasets.create("mnist", 128, False, root=tiny_data, seed=3)
    torch.manual_seed(0)
    model = models.create("cnn", 10)
    cent = CenterLoss(10, 2, use_gpu=False)
    ref_model, ref_centers = models.create("cnn", 10), cent.centers.detach().clone()
    ref_model.load_state_dict(model.state_dict())
    ref_centers.requires_grad_()
    opt_m = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    opt_c = torch.optim.SGD(cent.parameters(), lr=0.5)
    main.train(model, torch.nn.CrossEntropyLoss(), cent, opt_m, opt_c, data.trainloader, args, 0)

    ref_opt_m = torch.optim.SGD(ref_model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    ref_opt_c = torch.optim.SGD([ref_centers], lr=0.5)
    data.generator.manual_seed(3)  # the same two batches again
    for x, y in data.trainloader:
        features, logits = ref_model(x)
        # popular: B x C distance matrix, masked, clamped, summed / B
        dist = ((features.unsqueeze(1) - ref_centers.unsqueeze(0)) ** 2).sum(2)
        mask = y.unsqueeze(1).eq(torch.arange(10).unsqueeze(0)).float()
        loss_cent = (dist * mask).clamp(1e-12, 1e12).sum() / len(y)
        loss = torch.nn.functional.cross_entropy(logits, y) + 0.5 * loss_cent
        ref_opt_m.zero_grad()
        ref_opt_c.zero_grad()
        loss.backward()
        ref_opt_m.step()
        ref_centers.grad.data *= 1 / 0.5
        ref_opt_c.step()
    torch.testing.assert_close(cent.centers.detach(), ref_centers.detach(), rtol=1e-4, atol=1e-6)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_softmax_only(tmp_path, tiny_data, capsys):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "1", "--weight-cent", "0")
    batch = [l for l in capsys.readouterr().out.splitlines() if l.startswith("Batch ")]
    assert batch and all(l.endswith("CenterLoss 0.000000 (0.000000)") for l in batch)
    torch.manual_seed(1)  # --seed 1: the same initial centers, never updated
    models.create("cnn", 10)
    initial = CenterLoss(10, 2, use_gpu=False).centers.detach()
    torch.testing.assert_close(checkpoint(save_dir)["center_loss"]["centers"], initial)
    assert float(metrics(save_dir)[0]["center_loss"]) == 0


def test_paper_update_moves_centers_differently(tmp_path, tiny_data):
    grad_dir = run_main(tmp_path, tiny_data, "--max-epoch", "1", name="grad")
    paper_dir = run_main(tmp_path, tiny_data, "--max-epoch", "1", "--center-update", "paper",
                         name="paper")
    ckpt = checkpoint(paper_dir)
    assert ckpt["args"]["center_update"] == "paper"
    grad_centers = checkpoint(grad_dir)["center_loss"]["centers"]
    assert not torch.allclose(ckpt["center_loss"]["centers"], grad_centers)


def test_amp_and_wide_features(tmp_path, micro_data):
    save_dir = run_main(tmp_path, micro_data, "--max-epoch", "1", "--amp", "--feat-dim", "3",
                        "--plot")
    row = metrics(save_dir)[0]
    assert all(torch.isfinite(torch.tensor(float(row[k]))) for k in ("loss", "ratio"))
    assert checkpoint(save_dir)["center_loss"]["centers"].shape == (10, 3)
    assert os.path.exists(os.path.join(save_dir, "test", "epoch_1.png"))


def test_fashion_mnist(tmp_path, tiny_data, capsys):
    save_dir = run_main(tmp_path, tiny_data, "--max-epoch", "1", "-d", "fashion-mnist")
    assert "Creating dataset: fashion-mnist" in capsys.readouterr().out
    assert os.path.exists(os.path.join(save_dir, "log_fashion-mnist.txt"))


def test_non_finite_loss_stops_with_message(tmp_path, tiny_data, capsys, monkeypatch):
    calls = []

    class NaNAtBatch7(torch.nn.CrossEntropyLoss):
        def forward(self, logits, labels):
            calls.append(1)
            loss = super().forward(logits, labels)
            return loss * float("nan") if len(calls) == 7 else loss

    monkeypatch.setattr(main.nn, "CrossEntropyLoss", NaNAtBatch7)
    with pytest.raises(SystemExit) as exc:
        run_main(tmp_path, tiny_data, "--max-epoch", "3")
    assert exc.value.code == 1
    assert "Stopped: loss is nan at epoch 2, batch 3." in capsys.readouterr().out
    assert checkpoint(str(tmp_path / "run"))["epoch"] == 1  # the last good one


def test_kill_and_resume_is_bit_identical(tmp_path, micro_data, capsys):
    flags = ["--data-root", micro_data, "--use-cpu", "--batch-size", "16", "--print-freq", "1",
             "--eval-freq", "1", "--max-epoch", "2", "--lr-model", "0.01"]
    whole = str(tmp_path / "whole")
    main.main([*flags, "--save-dir", whole])

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "main.py"), *flags,
                             "--save-dir", killed], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **NO_NETWORK})
    seen_epoch2 = False
    for line in proc.stdout:  # kill in the middle of epoch 2, after epoch 1's checkpoint
        seen_epoch2 |= line.startswith("==> Epoch 2/2")
        if seen_epoch2 and line.startswith("Batch 2/4"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint(killed)["epoch"] == 1

    capsys.readouterr()
    main.main([*flags, "--save-dir", killed, "--resume", os.path.join(killed, "checkpoint.pth.tar")])
    resumed = capsys.readouterr().out
    assert "Resumed from" in resumed
    killed_log = read(os.path.join(killed, "log_mnist.txt"))  # kept across the kill, appended
    assert killed_log.count("==> Epoch 1/2") == 1 and killed_log.count("Resumed from") == 1
    a, b = checkpoint(whole), checkpoint(killed)
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "center_loss"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name
    assert [r["accuracy"] for r in metrics(whole)] == [r["accuracy"] for r in metrics(killed)]
    accuracy = re.compile(r"^Accuracy.*$", re.M)
    assert accuracy.findall(read(os.path.join(whole, "log_mnist.txt")))[-1:] == \
        accuracy.findall(resumed)


def test_missing_dataset_is_one_clear_line(tmp_path):
    result = cli("--data-root", str(tmp_path / "nowhere"), "--use-cpu", "--save-dir",
                 str(tmp_path / "log"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in err
    assert "train-images-idx3-ubyte" in err and "--data-root" in err
    assert not os.path.exists(tmp_path / "nowhere")  # the folders the attempt made: gone


@pytest.mark.parametrize("flags, fragments", [
    (["--batch-size", "0"], ["0 is not allowed: must be a positive integer"]),
    (["--max-epoch", "-3"], ["-3 is not allowed: must be a positive integer"]),
    (["--lr-model", "-0.1"], ["-0.1 is not allowed: must be a finite number >= 0"]),
    (["--lr-cent", "nan"], ["nan is not allowed"]),
    (["-d", "cifar10"], ["invalid choice: 'cifar10'", "fashion-mnist", "mnist"]),
    (["--model", "resnet"], ["invalid choice: 'resnet'", "cnn"]),
    (["--center-update", "ema"], ["invalid choice: 'ema'", "grad", "paper"]),
    (["--batch-size", "lots"], ["invalid int value: 'lots'"]),
])
def test_bad_flags_exit_2(flags, fragments, capsys):
    with pytest.raises(SystemExit) as exc:
        main.get_parser().parse_args(flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(fragment in err for fragment in fragments), err


def test_bad_flag_given_to_main(capsys):
    with pytest.raises(SystemExit) as exc:
        main.main(["--batch-size", "-1"])
    assert exc.value.code == 2 and "must be a positive integer" in capsys.readouterr().err


def test_resume_missing_file(tmp_path):
    line = exit_line("--resume", str(tmp_path / "none.pth.tar"), "--save-dir", str(tmp_path))
    assert line == f"error: --resume {tmp_path / 'none.pth.tar'}: no such checkpoint file"


def test_center_loss_on_the_normalised_feature(tiny_data):
    """--center-feature normalised: the center loss term is CenterLoss of the features'
    directions; the model's features themselves are returned (and plotted) as they are."""
    data = datasets.create("mnist", 64, False, root=tiny_data, seed=3)
    batch = next(iter(data.trainloader))
    out = {}
    for feature in ("raw", "normalised"):
        args = main.get_parser().parse_args(["--use-cpu", "--weight-cent", "0.5",
                                             "--center-update", "paper", "--center-feature",
                                             feature])
        torch.manual_seed(0)
        model = models.create("cnn", num_classes=10)
        cent = CenterLoss(10, 2, use_gpu=False, update="paper")
        centers = cent.centers.detach().clone()
        with torch.no_grad():
            want_features = model(batch[0])[0]
        opt_m = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        opt_c = torch.optim.SGD(cent.parameters(), lr=0.5)
        features, values = main.train_step(model, nn.CrossEntropyLoss(), cent, opt_m, opt_c,
                                           *batch, args)
        assert torch.allclose(features, want_features, atol=1e-5)
        pulled = want_features if feature == "raw" else F.normalize(want_features, dim=1)
        want = 0.5 * ((pulled - centers[batch[1]]) ** 2).sum(1).mean()
        assert values[2].item() == pytest.approx(want.item(), rel=1e-4)
        out[feature] = cent.centers.detach().clone()
    # eq. 4 moved the centers toward the directions, not the features
    directions = F.normalize(want_features, dim=1)
    label = batch[1][0]
    mine = directions[batch[1] == label]
    n = len(mine)
    step = 0.5 * (centers[label] - mine).sum(0) / (1 + n)
    assert torch.allclose(out["normalised"][label], centers[label] - step, atol=1e-5)
