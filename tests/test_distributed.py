"""Data-parallel training with 2 CPU processes (gloo): CenterLoss(distributed=True) on
its own, and torchrun main.py, each against a single process with the global batch."""
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import main
import models
import utils
from center_loss import CenterLoss
from conftest import ROOT

WORLD = 2
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch(step, batch=12, num_classes=30, feat_dim=4):
    gen = torch.Generator().manual_seed(100 + step)
    features = torch.randn(batch, feat_dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_classes // 3, (batch,), generator=gen)  # repeats, absentees
    return features, labels


def train_centers(update, sparse, rank=0, world=1, steps=3, weight=0.5, lr=0.5):
    """A few steps of the 1/lambda-rescaled SGD loop; this rank's share of each batch."""
    torch.manual_seed(rank)  # different initial centers per rank: the broadcast must fix it
    loss_fn = CenterLoss(30, 4, use_gpu=False, update=update, sparse=sparse,
                         distributed=world > 1).double()
    opt = torch.optim.SGD(loss_fn.parameters(), lr=lr)
    feature_grads = []
    for step in range(steps):
        features, labels = global_batch(step)
        share = len(labels) // world
        x = features[rank * share:(rank + 1) * share].clone().requires_grad_()
        opt.zero_grad()
        (weight * loss_fn(x, labels[rank * share:(rank + 1) * share])).backward()
        for p in loss_fn.parameters():
            p.grad.data *= 1.0 / weight
        opt.step()
        feature_grads.append(x.grad)
    return loss_fn.centers.detach(), torch.cat(feature_grads)


def _worker(rank, port, update, sparse, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        torch.save(train_centers(update, sparse, rank, WORLD), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("update, sparse", [("grad", False), ("paper", False), ("paper", True)])
def test_center_loss_distributed_equals_single_process(update, sparse, tmp_path):
    mp.spawn(_worker, args=(free_port(), update, sparse, str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    # the single process starts from rank 0's centers, as the broadcast makes the ranks do
    centers, feature_grads = train_centers(update, sparse)
    for rank_centers, rank_grads in ranks:
        assert torch.equal(rank_centers, ranks[0][0])  # identical on every rank
        torch.testing.assert_close(rank_centers, centers, rtol=1e-12, atol=1e-12)
    # each rank's loss is its shard's mean: its features' gradient is WORLD times the
    # global mean's, which DDP's averaging of the model's gradients brings back
    for rank, (_, rank_grads) in enumerate(ranks):
        mine = feature_grads.view(3, WORLD, -1, 4)[:, rank].reshape(-1, 4)
        torch.testing.assert_close(rank_grads / WORLD, mine, rtol=1e-12, atol=1e-12)


def test_distributed_needs_a_process_group():
    with pytest.raises(ValueError, match="init_process_group"):
        CenterLoss(10, 2, use_gpu=False, distributed=True)


def torchrun(*args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", os.path.join(ROOT, "main.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **NO_NETWORK, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("update", ["grad", "paper"])
def test_torchrun_reproduces_single_process(update, tmp_path, tiny_data):
    flags = ["--data-root", tiny_data, "--use-cpu", "--batch-size", "64", "--max-epoch", "2",
             "--eval-freq", "1", "--print-freq", "2", "--lr-model", "0.01",
             "--center-update", update]
    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    main.main(flags + ["--save-dir", single])
    if update == "paper":  # here torchrun stops after epoch 1 and resumes: the same end
        stopped = torchrun(*flags, "--max-epoch", "1", "--save-dir", ddp)  # the last one counts
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        flags = flags + ["--resume", os.path.join(ddp, "checkpoint.pth.tar")]
    result = torchrun(*flags, "--save-dir", ddp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Resumed from") == (update == "paper")

    a = utils.load_checkpoint(os.path.join(single, "checkpoint.pth.tar"), "cpu")
    b = utils.load_checkpoint(os.path.join(ddp, "checkpoint.pth.tar"), "cpu")
    torch.manual_seed(1)  # --seed 1: the initial weights and centers, to measure the travel
    init = {"model": models.create("cnn", 10).state_dict(),
            "center_loss": CenterLoss(10, 2, use_gpu=False).state_dict()}
    for key in ("model", "center_loss"):
        for name in a[key]:
            # float32 sums in another order: after one step the runs differ by ~1e-8
            # (rounding), which 16 steps amplify to ~2e-5 of the weights; still tiny next to them
            # and of the distance the training moved them
            travel = (a[key][name] - init[key][name]).norm()
            gap = (b[key][name] - a[key][name]).norm()
            assert gap <= 1e-4 * a[key][name].norm() and gap <= 1e-2 * travel, \
                (key, name, float(gap), float(travel))

    with open(os.path.join(ddp, "log_mnist.txt")) as f:
        log = f.read().splitlines()
    with open(os.path.join(single, "log_mnist.txt")) as f:
        single_log = f.read().splitlines()
    assert "Processes in sync: model and centers identical on all 2 ranks" in log
    assert "Distributed: 2 processes, backend gloo" in log
    first = "==> Epoch 1/1" if update == "paper" else "==> Epoch 1/2"
    for line in (first, "==> Epoch 2/2"):
        assert log.count(line) == 1  # only rank 0 writes; a resumed run appends to its log
    batch_lines = [l for l in log if l.startswith("Batch ")]
    assert len(batch_lines) == len([l for l in single_log if l.startswith("Batch ")]) == 4
    accuracy = [l for l in log if l.startswith("Accuracy")]
    assert accuracy == [l for l in single_log if l.startswith("Accuracy")]
    assert result.stdout.count("==> Epoch 2/2") == 1


def test_torchrun_refuses_a_batch_that_does_not_split(tmp_path, tiny_data):
    result = torchrun("--data-root", tiny_data, "--use-cpu", "--batch-size", "33",
                      "--save-dir", str(tmp_path))
    assert result.returncode != 0
    assert "--batch-size 33 is the global batch and must split evenly over 2 processes" \
        in result.stderr


def test_torchrun_open_set_keeps_the_test_order(tmp_path, tiny_data):
    """Held-out classes 0,6,7,8 leave 155 training images: the last batch of 27 cannot split
    over 2 processes, so one image of it sits out each epoch instead of the run being
    refused. The ranks' test blocks are gathered in order: a single process evaluating
    the same checkpoint gets the same features for the same images."""
    ddp = str(tmp_path / "ddp")
    flags = ["--data-root", tiny_data, "--use-cpu", "--batch-size", "64", "--max-epoch", "1",
             "--holdout-classes", "0,6,7,8", "--save-dir", ddp]
    result = torchrun(*flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Processes in sync: model and centers identical on all 2 ranks" in result.stdout
    gathered = torch.load(os.path.join(ddp, "test_features.pt"), weights_only=True)
    single = str(tmp_path / "single")
    main.main(flags[:-1] + [single, "--evaluate", "--resume",
                            os.path.join(ddp, "checkpoint.pth.tar")])
    alone = torch.load(os.path.join(single, "test_features.pt"), weights_only=True)
    assert torch.equal(gathered["labels"], alone["labels"])
    torch.testing.assert_close(gathered["features"], alone["features"], rtol=1e-4, atol=1e-5)
