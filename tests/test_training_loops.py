"""CenterLoss in the training loops people write (the recipes of docs/center_loss.md): a
forgotten optimizer, optimizers other than plain SGD, AMP with GradScaler, and torch.compile."""
import copy
import math
import warnings

import pytest
import torch

import center_loss as center_loss_module
import main
from center_loss import CenterLoss

STALE = center_loss_module._STALE_STEPS


def blobs(step, num_classes, in_dim=8, batch=32, dtype=torch.float64):
    """A seeded batch of Gaussian blobs around fixed class means."""
    gen = torch.Generator().manual_seed(1000 + step)
    means = torch.randn(num_classes, in_dim, generator=torch.Generator().manual_seed(0),
                        dtype=dtype) * 3
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    return means[labels] + torch.randn(batch, in_dim, generator=gen, dtype=dtype), labels


# forgotten optimizer -----------------------------------------------------------------------

def run_loop(steps, step_centers=True, freeze=False, train=True, by_data=False, accumulate=1,
             fused=None):
    """A softmax-free loop; returns the RuntimeWarnings it raised."""
    torch.manual_seed(0)
    net, loss_fn = torch.nn.Linear(8, 2), CenterLoss(4, 2, use_gpu=False)
    loss_fn.centers.requires_grad_(not freeze)
    loss_fn.train(train)
    opt = torch.optim.SGD(list(net.parameters()) + list(loss_fn.parameters()), lr=0.01,
                          fused=fused)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(steps):
            x, y = blobs(step, 4, dtype=torch.float32)
            loss_fn(net(x), y).backward()
            if step % accumulate == accumulate - 1:
                if step_centers:
                    opt.step()
                elif by_data:  # an update outside autograd, which _version does not see
                    loss_fn.centers.data -= 0.1 * loss_fn.centers.grad
                opt.zero_grad()
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_forgotten_optimizer_warns_once_naming_the_fix():
    caught = run_loop(2 * STALE + 10, step_centers=False)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "never changed" in message and "torch.optim.SGD(center_loss.parameters()" in message
    assert "requires_grad_(False)" in message
    assert caught[0].filename == __file__  # points at the caller's line


def test_forgotten_optimizer_warns_only_after_the_threshold():
    assert run_loop(STALE, step_centers=False) == []
    assert len(run_loop(STALE + 5, step_centers=False)) == 1


@pytest.mark.parametrize("case", [dict(), dict(accumulate=8), dict(step_centers=False, freeze=True),
                                  dict(step_centers=False, train=False),
                                  dict(step_centers=False, by_data=True), dict(fused=True)],
                         ids=["correct loop", "gradient accumulation", "frozen centers",
                              "eval mode", "update through .data",
                              "fused SGD"])  # fused steps do not bump _version either
def test_no_warning(case):
    assert run_loop(STALE + 10, **case) == []


def test_forgotten_optimizer_caught_on_a_deepcopy():
    """A deepcopy drops tensor hooks: the module registers its own again."""
    original = CenterLoss(4, 2, use_gpu=False)
    for step in range(3):  # unchanged between calls: the hook is registered
        original(*blobs(step, 4, in_dim=2, dtype=torch.float32)).backward()
    assert original._grad_hook is not None
    loss_fn = copy.deepcopy(original)
    with pytest.warns(RuntimeWarning, match="never changed"):
        for step in range(STALE + 5):
            x, y = blobs(step, 4, in_dim=2, dtype=torch.float32)
            loss_fn(x, y).backward()


# torch.compile -------------------------------------------------------------------------------

@pytest.mark.parametrize("update", ["grad", "paper"])
def test_compile_fullgraph_equals_eager(update):
    torch.manual_seed(0)
    loss_fn = CenterLoss(10, 4, use_gpu=False, update=update)  # default arguments otherwise
    x, y = torch.randn(16, 4, requires_grad=True), torch.randint(0, 10, (16,))
    y[:4] = 3  # repeated labels: n_j > 1 in eq. 4
    explained = torch._dynamo.explain(loss_fn)(x, y)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
        explained.break_reasons

    compiled = torch.compile(loss_fn, fullgraph=True)
    (2.0 * compiled(x, y)).backward()
    got = x.grad.clone(), loss_fn.centers.grad.clone()
    x.grad, loss_fn.centers.grad = None, None
    (2.0 * loss_fn(x, y)).backward()
    torch.testing.assert_close(compiled(x, y), loss_fn(x, y))
    torch.testing.assert_close(got[0], x.grad)
    torch.testing.assert_close(got[1], loss_fn.centers.grad)
    # compiled, the range check is skipped: Inductor's bounds check fails instead (CPU)
    with pytest.raises(RuntimeError, match="out of bounds"):
        compiled(x, torch.where(y == 3, 10, y))
    with pytest.raises(ValueError, match="got a label 10"):  # eager: unchanged
        loss_fn(x, torch.where(y == 3, 10, y))


# optimizers other than plain SGD ----------------------------------------------------------

def center_steps(make_opt, weight, rescale=True, steps=20, update="grad"):
    """Steps on the centers alone, over fixed features; returns the final centers."""
    torch.manual_seed(0)
    loss_fn = CenterLoss(6, 4, use_gpu=False, update=update).double()
    opt = make_opt(loss_fn.parameters())
    for step in range(steps):
        x, y = blobs(step, 6, in_dim=4)
        opt.zero_grad()
        (weight * loss_fn(x, y)).backward()
        if rescale:
            for p in loss_fn.parameters():
                p.grad.data *= 1.0 / weight
        opt.step()
    return loss_fn.centers.detach()


def test_rescale_is_a_no_op_under_adam():
    """Adam divides by the gradient's RMS: scaling the gradient by 1/lambda changes
    nothing (up to eps), where under SGD it is what keeps lambda from slowing the centers."""
    def gap(make_opt):
        return (center_steps(make_opt, 0.01) - center_steps(make_opt, 0.01, rescale=False)).norm()
    for adam in (torch.optim.Adam, torch.optim.AdamW):
        assert gap(lambda p: adam(p, lr=0.1, weight_decay=0)) < 1e-4 * gap(
            lambda p: torch.optim.SGD(p, lr=0.5))
    assert gap(lambda p: torch.optim.SGD(p, lr=0.5)) > 0.5


@pytest.mark.parametrize("update", ["grad", "paper"])
def test_rescale_makes_lambda_irrelevant_under_sgd_with_momentum(update):
    def sgd(p):
        return torch.optim.SGD(p, lr=0.1, momentum=0.9)
    small, large = (center_steps(sgd, w, update=update) for w in (0.01, 1.0))
    torch.testing.assert_close(small, large, rtol=1e-10, atol=1e-12)
    assert (center_steps(sgd, 0.01, rescale=False, update=update) - large).norm() > 0.1


def shared_sgd_loop(groups, steps, weight=0.1, lr=0.1, scheduler=None, scale=None):
    """Model + centers in one SGD(momentum=0.9, weight_decay=5e-4); classes 4 and 5
    never appear in a batch."""
    torch.manual_seed(0)
    net, loss_fn = torch.nn.Linear(8, 2).double(), CenterLoss(6, 2, use_gpu=False).double()
    if groups:
        params = [{"params": net.parameters()},
                  {"params": loss_fn.parameters(), "lr": 0.5, "momentum": 0, "weight_decay": 0}]
    else:
        params = list(net.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = scheduler(opt) if scheduler else None
    before = loss_fn.centers.detach().clone()
    for step in range(steps):
        x, y = blobs(step, 4)
        opt.zero_grad()
        (weight * loss_fn(net(x), y)).backward()
        for p in loss_fn.parameters():
            p.grad.data *= scale if scale is not None else 1.0 / weight
        opt.step()
        if sched:
            sched.step()
    return before, net, loss_fn.centers.detach()


def test_shared_optimizer_weight_decay_shrinks_absent_centers():
    """Weight decay lr * wd / (1 - m) = 5e-4 per step once momentum m = 0.9 has built up
    (after about m / (1 - m) = 9 steps): x exp(-5e-4 * (200 - 9)) in 200 steps, x0.61 in
    1,000."""
    before, _, after = shared_sgd_loop(groups=False, steps=200)
    shrink = after[4:].norm(dim=1) / before[4:].norm(dim=1)
    expected = torch.full((2,), math.exp(-5e-4 * (200 - 9)), dtype=torch.float64)
    torch.testing.assert_close(shrink, expected, atol=1e-3, rtol=0)
    before, _, after = shared_sgd_loop(groups=True, steps=200)  # own group: untouched
    assert torch.equal(after[4:], before[4:])


def step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)


def test_param_group_loop_equals_two_optimizers():
    """A group of their own (own lr, weight_decay=0, no momentum), and a LambdaLR that
    leaves the centers' lr alone, reproduce the two-optimizer loop; the popular
    lr_cent / (alpha * lr) trick does not once the schedule decays lr."""
    torch.manual_seed(0)
    net, loss_fn = torch.nn.Linear(8, 2).double(), CenterLoss(6, 2, use_gpu=False).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_cent, sched = torch.optim.SGD(loss_fn.parameters(), lr=0.5), step_lr(opt)
    for step in range(12):
        x, y = blobs(step, 4)
        opt.zero_grad()
        opt_cent.zero_grad()
        (0.1 * loss_fn(net(x), y)).backward()
        for p in loss_fn.parameters():
            p.grad.data *= 1.0 / 0.1
        opt.step()
        opt_cent.step()
        sched.step()

    def per_group(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, [lambda e: 0.5 ** (e // 5), lambda e: 1.0])
    _, net_groups, centers_groups = shared_sgd_loop(groups=True, steps=12, scheduler=per_group)
    torch.testing.assert_close(centers_groups, loss_fn.centers.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net_groups.weight, net.weight, rtol=1e-12, atol=1e-12)
    _, _, centers_trick = shared_sgd_loop(groups=False, steps=12, scheduler=step_lr,
                                          scale=0.5 / (0.1 * 0.1))
    assert (centers_trick - loss_fn.centers.detach()).norm() > 0.1


# AMP: GradScaler with a separate center optimizer ---------------------------------------------

def amp_loop(update, device, dtype, amp=True, unscale=True, steps=3, weight=0.1):
    """docs/center_loss.md's recipe (or the fp32 loop with amp=False); returns the centers'
    total update and the final scale."""
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 4).to(device)
    loss_fn = CenterLoss(5, 4, use_gpu=False, update=update).to(device)
    opt, opt_cent = (torch.optim.SGD(net.parameters(), lr=0.01),
                     torch.optim.SGD(loss_fn.parameters(), lr=0.5))
    # 2**10, not the default 2**16, which overflows this model's fp16 weight gradient:
    # the step would be skipped (rightly), and the loops would not compare
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 10, enabled=amp)
    before = loss_fn.centers.detach().clone()
    for step in range(steps):
        x, y = (t.to(device) for t in blobs(step, 5, batch=16, dtype=torch.float32))
        with torch.autocast(device, dtype=dtype, enabled=amp):
            features = net(x)
            loss = weight * loss_fn(features, y)  # + a softmax loss
        assert features.dtype == (dtype if amp else torch.float32)
        opt.zero_grad()
        opt_cent.zero_grad()
        scaler.scale(loss).backward()
        if unscale:
            scaler.unscale_(opt_cent)  # the centers' true gradient from here on
        for p in loss_fn.parameters():
            p.grad.data *= 1.0 / weight
        scaler.step(opt)
        if unscale:
            scaler.step(opt_cent)  # skipped, as opt's, if the gradient holds inf/NaN
        else:
            opt_cent.step()  # the mistake: the centers step with the scaled gradient
        scaler.update()
    return loss_fn.centers.detach() - before, scaler.get_scale() if amp else None


def check_amp(update, device, dtype, rtol):
    reference, _ = amp_loop(update, device, dtype, amp=False)
    moved, scale = amp_loop(update, device, dtype)
    assert scale == 2.0 ** 10  # the loss was scaled, and no step skipped
    torch.testing.assert_close(moved, reference, rtol=0, atol=rtol * reference.abs().max())
    wrong, _ = amp_loop(update, device, dtype, unscale=False, steps=1)
    assert wrong.abs().max() > 100 * reference.abs().max()


@pytest.mark.parametrize("update", ["grad", "paper"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_amp_grad_scaler_recipe_matches_fp32_on_cpu(update, dtype):
    check_amp(update, "cpu", dtype, rtol=2e-3 if dtype == torch.float16 else 1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("update", ["grad", "paper"])
def test_amp_grad_scaler_recipe_matches_fp32_on_cuda(update):
    check_amp(update, "cuda", torch.float16, rtol=2e-3)


def test_compiled_training_equals_eager(tmp_path, tiny_data, monkeypatch):
    """--compile default trains the same model as eager (to float rounding) and saves a
    plain checkpoint. The graph is captured and split into forward and backward as with
    inductor, but run by aot_eager: generating C++ for it takes half a minute."""
    from test_main import FAST, checkpoint, metrics
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode: compile_(model, backend="aot_eager"))
    runs = {}
    for mode in ("none", "default"):
        save_dir = str(tmp_path / mode)
        main.main(["--data-root", tiny_data, "--save-dir", save_dir, *FAST, "--max-epoch", "1",
                   "--compile", mode])
        runs[mode] = (metrics(save_dir)[-1], checkpoint(save_dir)["model"])
    (eager, w_eager), (compiled, w_compiled) = runs["none"], runs["default"]
    assert float(compiled["loss"]) == pytest.approx(float(eager["loss"]), rel=1e-3)
    assert w_eager.keys() == w_compiled.keys()  # no "_orig_mod." prefix
    for key in w_eager:
        assert torch.allclose(w_eager[key].float(), w_compiled[key].float(), atol=1e-3), key
