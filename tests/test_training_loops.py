"""CenterLoss in the training loops people write (the recipes of center_loss.py's
docstring): a forgotten optimizer, optimizers other than plain SGD, AMP with GradScaler,
and torch.compile."""
import warnings

import pytest
import torch

import center_loss as center_loss_module
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
    caught = run_loop(3 * STALE, step_centers=False)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "never changed" in message and "torch.optim.SGD(center_loss.parameters()" in message
    assert "requires_grad_(False)" in message
    assert caught[0].filename == __file__  # points at the caller's line


def test_forgotten_optimizer_warns_only_after_the_threshold():
    assert run_loop(STALE, step_centers=False) == []
    assert len(run_loop(STALE + 2, step_centers=False)) == 1


@pytest.mark.parametrize("case", [dict(), dict(accumulate=8), dict(step_centers=False, freeze=True),
                                  dict(step_centers=False, train=False),
                                  dict(step_centers=False, by_data=True), dict(fused=True)],
                         ids=["correct loop", "gradient accumulation", "frozen centers",
                              "eval mode", "update through .data",
                              "fused SGD"])  # fused steps do not bump _version either
def test_no_warning(case):
    assert run_loop(2 * STALE + 2, **case) == []


def test_forgotten_optimizer_caught_on_a_deepcopy():
    """A deepcopy drops tensor hooks: the module registers its own again."""
    import copy
    loss_fn = copy.deepcopy(CenterLoss(4, 2, use_gpu=False))
    with pytest.warns(RuntimeWarning, match="never changed"):
        for step in range(STALE + 2):
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
