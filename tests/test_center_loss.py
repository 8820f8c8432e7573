"""CenterLoss against brute-force formulas, the popular B x C formulation, autograd,
and the paper's update rule (Wen et al. 2016, eq. 4)."""
import doctest
import warnings

import pytest
import torch

import center_loss as center_loss_module
from center_loss import CenterLoss

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make(num_classes=7, feat_dim=3, batch=11, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    loss_fn = CenterLoss(num_classes, feat_dim, use_gpu=False, **kwargs).to(dtype)
    features = torch.randn(batch, feat_dim, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,))
    return loss_fn, features, labels


def brute_force(features, labels, centers):
    """Per-sample clamped squared distance, one sample at a time."""
    return torch.stack([((features[i] - centers[labels[i]]) ** 2).sum().clamp(1e-12, 1e12)
                        for i in range(len(labels))])


def popular(features, labels, centers):
    """KaiyangZhou/pytorch-center-loss's forward, re-derived: the full B x C distance
    matrix ||x||^2 + ||c||^2 - 2 x.c, masked by the labels, clamped, summed / B."""
    batch, num_classes = features.shape[0], centers.shape[0]
    distmat = (features.pow(2).sum(1, keepdim=True).expand(batch, num_classes)
               + centers.pow(2).sum(1, keepdim=True).expand(num_classes, batch).t())
    distmat = distmat - 2 * features @ centers.t()
    mask = labels.unsqueeze(1).eq(torch.arange(num_classes).unsqueeze(0))
    return (distmat * mask.to(distmat.dtype)).clamp(min=1e-12, max=1e12).sum() / batch


def paper_delta(features, labels, centers):
    """Eq. 4: delta c_j = sum_{i: y_i=j} (c_j - x_i) / (1 + n_j), 0 for absent classes."""
    delta = torch.zeros_like(centers)
    for j in range(centers.shape[0]):
        members = features[labels == j]
        delta[j] = (centers[j] - members).sum(0) / (1 + len(members))
    return delta


# value ---------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_matches_brute_force(reduction):
    loss_fn, x, y = make(reduction=reduction)
    per_sample = brute_force(x, y, loss_fn.centers)
    expected = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    torch.testing.assert_close(loss_fn(x, y), expected, rtol=1e-12, atol=0)


def test_value_matches_popular_formulation():
    loss_fn, x, y = make(num_classes=50, feat_dim=8, batch=64)
    # The popular version clamps each of the B*(C-1) masked-out zeros up to 1e-12.
    offset = (loss_fn.num_classes - 1) * 1e-12
    torch.testing.assert_close(loss_fn(x, y) + offset, popular(x, y, loss_fn.centers),
                               rtol=1e-10, atol=0)


def test_value_matches_popular_in_float32():
    loss_fn, x, y = make(num_classes=10, feat_dim=2, batch=128, dtype=torch.float32)
    torch.testing.assert_close(loss_fn(x, y), popular(x, y, loss_fn.centers), rtol=1e-5, atol=1e-6)


def test_clamped_like_popular():
    loss_fn = CenterLoss(3, 2, use_gpu=False, reduction="none")
    x = loss_fn.centers.detach()[[0, 1]].clone()  # exactly on the centers: distance 0
    x[1] += 1e7                                   # distance 2e14 > 1e12
    out = loss_fn(x, torch.tensor([0, 1]))
    torch.testing.assert_close(out, torch.tensor([1e-12, 1e12]))


# gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("update", ["grad", "paper"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_features(update, reduction):
    loss_fn, x, y = make(update=update, reduction=reduction)
    assert torch.autograd.gradcheck(lambda f: loss_fn(f, y), (x,))


def test_gradcheck_centers_grad_mode():
    """In 'grad' mode the centers' gradient is the true one (checked on the autograd
    Function itself, which gradcheck can perturb)."""
    from center_loss import _CenterDistance
    loss_fn, x, y = make()
    centers = loss_fn.centers.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f, c: _CenterDistance.apply(f, c, y, y, "grad", False, 1.0), (x, centers))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_mode_matches_autograd_of_brute_force(reduction):
    loss_fn, x, y = make(reduction=reduction)
    (3.0 * loss_fn(x, y)).backward()
    centers = loss_fn.centers.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    per_sample = brute_force(x2, y, centers)
    (3.0 * (per_sample.mean() if reduction == "mean" else per_sample.sum())).backward()
    torch.testing.assert_close(loss_fn.centers.grad, centers.grad)
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_paper_mode_gives_eq4_times_loss_scale(reduction):
    # 12 classes, 9 samples: several classes are absent from the batch.
    loss_fn, x, y = make(num_classes=12, batch=9, update="paper", reduction=reduction)
    y[:3] = 4  # a class with several samples
    weight = 0.25
    (weight * loss_fn(x, y)).backward()
    delta = paper_delta(x.detach(), y, loss_fn.centers.detach())
    torch.testing.assert_close(loss_fn.centers.grad, weight * delta)
    absent = torch.ones(12, dtype=torch.bool)
    absent[y] = False
    assert absent.any() and (loss_fn.centers.grad[absent] == 0).all()


def test_paper_mode_sgd_step_is_c_minus_alpha_delta():
    """1/lambda rescaling + SGD(lr=alpha) performs c_j <- c_j - alpha * delta c_j."""
    loss_fn, x, y = make(num_classes=5, batch=20, update="paper")
    weight, alpha = 0.01, 0.5
    before = loss_fn.centers.detach().clone()
    delta = paper_delta(x.detach(), y, before)
    opt = torch.optim.SGD(loss_fn.parameters(), lr=alpha)
    (torch.tensor(2.0) + weight * loss_fn(x, y)).backward()  # a softmax term would sit there
    for p in loss_fn.parameters():
        p.grad.data *= 1.0 / weight
    opt.step()
    torch.testing.assert_close(loss_fn.centers.detach(), before - alpha * delta)


def test_paper_mode_feature_gradient_is_ordinary():
    loss_grad, x, y = make(update="grad")
    loss_paper, x2, _ = make(update="paper")
    loss_grad(x, y).backward()
    loss_paper(x2, y).backward()
    torch.testing.assert_close(x.grad, x2.grad)


# sparse -----------------------------------------------------------------------------------

@pytest.mark.parametrize("update", ["grad", "paper"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sparse_equals_dense(update, reduction):
    dense, x, y = make(update=update, reduction=reduction)
    sparse, x2, _ = make(update=update, reduction=reduction, sparse=True)
    (0.5 * dense(x, y)).backward()
    (0.5 * sparse(x2, y)).backward()
    grad = sparse.centers.grad
    assert grad.is_sparse
    assert set(grad.coalesce().indices()[0].tolist()) == set(y.tolist())  # only batch rows
    torch.testing.assert_close(grad.to_dense(), dense.centers.grad)
    torch.testing.assert_close(x2.grad, x.grad)


def test_sparse_with_sgd_and_rescaling_matches_dense():
    results = []
    for sparse in (False, True):
        loss_fn, x, y = make(num_classes=1000, feat_dim=4, batch=16, sparse=sparse)
        opt = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
        for _ in range(3):  # gradients accumulate across two backward calls too
            opt.zero_grad()
            (2.0 * loss_fn(x, y)).backward()
            (2.0 * loss_fn(x, y)).backward()
            for p in loss_fn.parameters():
                p.grad.data *= 1.0 / 2.0
            opt.step()
        results.append(loss_fn.centers.detach())
    torch.testing.assert_close(results[1], results[0])


def test_sparse_with_sparse_adam_moves_only_batch_rows():
    loss_fn, x, y = make(num_classes=50, batch=8, dtype=torch.float32, sparse=True)
    before = loss_fn.centers.detach().clone()
    opt = torch.optim.SparseAdam(loss_fn.parameters(), lr=0.1)
    loss_fn(x, y).backward()
    opt.step()
    moved = (loss_fn.centers.detach() != before).any(1)
    assert set(moved.nonzero().flatten().tolist()) == set(y.tolist())


def test_sparse_large_class_count_touches_only_batch_rows():
    loss_fn, x, y = make(num_classes=1_000_000, feat_dim=8, batch=32, dtype=torch.float32,
                         sparse=True)
    loss_fn(x, y).backward()
    assert loss_fn.centers.grad.is_sparse
    assert loss_fn.centers.grad._nnz() == 32


# dtypes, devices, autocast --------------------------------------------------------------

def test_autocast_bf16_upcasts_and_keeps_centers_float32():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    loss_fn = CenterLoss(10, 2, use_gpu=False)
    x, y = torch.randn(16, 4), torch.randint(0, 10, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = net(x)
        loss = loss_fn(features, y)
    assert features.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and loss_fn.centers.dtype == torch.float32
    torch.testing.assert_close(loss, brute_force(features.float(), y, loss_fn.centers).mean())
    loss.backward()
    assert loss_fn.centers.grad.dtype == torch.float32 and net.weight.grad.dtype == torch.float32


def test_half_features_do_not_overflow():
    loss_fn = CenterLoss(2, 4, use_gpu=False, reduction="none")
    features = torch.full((2, 4), 300.0, dtype=torch.float16)  # 4 * 300^2 > fp16 max 65504
    out = loss_fn(features, torch.tensor([0, 1]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, brute_force(features.float(), torch.tensor([0, 1]),
                                                loss_fn.centers.detach()))


def test_double_module_and_float64_inputs():
    loss_fn = CenterLoss(4, 3, use_gpu=False).double()
    assert loss_fn.centers.dtype == torch.float64
    x = torch.randn(5, 3, requires_grad=True)  # float32 features, float64 centers
    loss = loss_fn(x, torch.tensor([0, 1, 2, 3, 0]))
    assert loss.dtype == torch.float64
    loss.backward()
    assert x.grad.dtype == torch.float32 and loss_fn.centers.grad.dtype == torch.float64


def test_use_gpu_without_cuda_warns_once_and_stays_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(center_loss_module, "_warned_no_cuda", False)
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        loss_fn = CenterLoss(10, 2, use_gpu=True)
    assert loss_fn.centers.device.type == "cpu" and not loss_fn.use_gpu
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CenterLoss(10, 2)  # default use_gpu=True: no second warning
    loss_fn(torch.randn(3, 2), torch.tensor([1, 2, 3]))


def test_state_dict_of_popular_implementation_loads():
    popular_state = {"centers": torch.randn(10, 2)}  # its only parameter
    loss_fn = CenterLoss(10, 2, use_gpu=False)
    loss_fn.load_state_dict(popular_state)
    torch.testing.assert_close(loss_fn.centers.detach(), popular_state["centers"])
    assert isinstance(loss_fn.centers, torch.nn.Parameter)


def test_centers_initialised_from_standard_normal():
    torch.manual_seed(0)
    centers = CenterLoss(1000, 100, use_gpu=False).centers.detach()
    assert abs(centers.mean().item()) < 0.01 and abs(centers.std().item() - 1) < 0.01


def test_zeros_init():
    centers = CenterLoss(5, 3, use_gpu=False, init="zeros").centers
    assert isinstance(centers, torch.nn.Parameter) and torch.equal(centers, torch.zeros(5, 3))


# empty batch, errors ----------------------------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_batch_is_zero_with_zero_gradients(reduction, sparse):
    loss_fn = CenterLoss(5, 2, use_gpu=False, reduction=reduction, sparse=sparse)
    x = torch.zeros(0, 2, requires_grad=True)
    loss = loss_fn(x, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad.shape == (0, 2)
    assert (loss_fn.centers.grad.to_dense() == 0).all()


def test_empty_batch_none_reduction():
    out = CenterLoss(5, 2, use_gpu=False, reduction="none")(torch.zeros(0, 2),
                                                           torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_classes=0), ValueError, r"num_classes must be >= 1, got 0"),
    (dict(feat_dim=-2), ValueError, r"feat_dim must be >= 1, got -2"),
    (dict(num_classes=2.5), TypeError, r"num_classes must be an int, got 2.5"),
    (dict(reduction="avg"), ValueError, r"reduction must be .*'none', got 'avg'"),
    (dict(update="sgd"), ValueError, r"update must be 'grad' or 'paper', got 'sgd'"),
    (dict(init="xavier"), ValueError, r"init must be 'randn' or 'zeros', got 'xavier'"),
])
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        CenterLoss(**{"use_gpu": False, **kwargs})


@pytest.mark.parametrize("features, labels, error, match", [
    (torch.randn(4), torch.tensor([0, 1, 2, 3]), ValueError, r"features must have shape .*got \(4,\)"),
    (torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), ValueError, r"feat_dim=3\), got \(4, 5\)"),
    (torch.arange(12).view(4, 3), torch.tensor([0, 1, 2, 3]), TypeError, r"features must be a floating"),
    (torch.randn(4, 3), torch.tensor([0., 1, 2, 3]), TypeError, r"labels must be an integer tensor, got .*float32"),
    (torch.randn(4, 3), [0, 1, 2, 3], TypeError, r"labels must be an integer tensor, got list"),
    (torch.randn(4, 3), torch.tensor([[0, 1, 2, 3]]), ValueError, r"labels must have shape \(batch_size,\) = \(4,\), got \(1, 4\)"),
    (torch.randn(4, 3), torch.tensor([0, 1, 2]), ValueError, r"got \(3,\)"),
    (torch.randn(4, 3), torch.tensor([0, 1, 2, 7]), ValueError, r"labels must be in \[0, num_classes=7\), got a label 7"),
    (torch.randn(4, 3), torch.tensor([0, -1, 2, 3]), ValueError, r"got a label -1"),
    (torch.randn(4, 3, device="meta"), torch.tensor([0, 1, 2, 3]), ValueError, r"same device"),
])
def test_input_errors(features, labels, error, match):
    loss_fn = CenterLoss(7, 3, use_gpu=False)
    with pytest.raises(error, match=match):
        loss_fn(features, labels)


def test_int32_labels_accepted():
    loss_fn, x, y = make()
    torch.testing.assert_close(loss_fn(x, y.int()), loss_fn(x, y))


# training ---------------------------------------------------------------------------------

def _train(style, update="grad", steps=60):
    """Features from a linear layer on Gaussian blobs; returns the center loss per step."""
    torch.manual_seed(0)
    num_classes, weight_cent, lr, lr_cent = 4, 0.1, 0.05, 0.5
    means = torch.randn(num_classes, 8) * 3
    net = torch.nn.Linear(8, 2)
    loss_fn = CenterLoss(num_classes, 2, use_gpu=False, update=update)
    if style == "two optimizers":
        opts = [torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9),
                torch.optim.SGD(loss_fn.parameters(), lr=lr_cent)]
        scale = 1.0 / weight_cent
    else:  # one optimizer over both, the centers' gradient scaled to lr_cent
        opts = [torch.optim.SGD(list(net.parameters()) + list(loss_fn.parameters()), lr=lr)]
        scale = lr_cent / (weight_cent * lr)
    history = []
    for _ in range(steps):
        y = torch.randint(0, num_classes, (64,))
        x = means[y] + torch.randn(64, 8)
        loss = weight_cent * loss_fn(net(x), y)
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for p in loss_fn.parameters():
            p.grad.data *= scale
        for opt in opts:
            opt.step()
        history.append(loss.item() / weight_cent)
    return history


@pytest.mark.parametrize("update", ["grad", "paper"])
@pytest.mark.parametrize("style", ["two optimizers", "one optimizer"])
def test_training_loop_lowers_center_loss(style, update):
    history = _train(style, update)
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.2 * first, (first, last)


def test_docstring_example_runs():
    result = doctest.testmod(center_loss_module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


# CUDA --------------------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("sparse", [False, True])
def test_cuda_matches_cpu(sparse):
    loss_cpu, x, y = make(sparse=sparse)
    loss_gpu = CenterLoss(7, 3, use_gpu=True, sparse=sparse).double()
    loss_gpu.load_state_dict(loss_cpu.state_dict())
    xg = x.detach().cuda().requires_grad_()
    loss_cpu(x, y).backward()
    loss_gpu(xg, y.cuda()).backward()
    torch.testing.assert_close(xg.grad.cpu(), x.grad)
    torch.testing.assert_close(loss_gpu.centers.grad.cpu().to_dense(),
                               loss_cpu.centers.grad.to_dense())


@cuda
def test_cuda_out_of_range_label_is_a_value_error_not_a_device_assert():
    loss_fn = CenterLoss(5, 2, use_gpu=True)
    with pytest.raises(ValueError, match="got a label 5"):
        loss_fn(torch.randn(3, 2, device="cuda"), torch.tensor([0, 1, 5], device="cuda"))
    loss_fn(torch.randn(3, 2, device="cuda"), torch.tensor([0, 1, 4], device="cuda"))  # still alive


@cuda
def test_cuda_device_mismatch():
    loss_fn = CenterLoss(5, 2, use_gpu=True)
    with pytest.raises(ValueError, match="same device"):
        loss_fn(torch.randn(3, 2), torch.tensor([0, 1, 2]))
