"""Center loss: Wen, Zhang, Li and Qiao, "A Discriminative Feature Learning Approach
for Deep Face Recognition", ECCV 2016.

Center loss pulls each feature towards a learnt center of its class; it is trained
beside a softmax loss, L = L_S + lambda * L_C (eq. 5). ``CenterLoss`` is a drop-in
replacement for the popular PyTorch implementation (KaiyangZhou/pytorch-center-loss):
the same arguments, ``centers`` parameter (its ``state_dict`` loads) and loss value,
in O(B*D) time and memory at any class count instead of O(B*C*D).

This file depends on torch (2.1 or later) only: copy it into your project as it is.
The project's documentation page on center loss has the derivations, measurements
and tested recipes (optimizers, mixed precision, torch.compile, several processes).
"""
import warnings

import torch
import torch.distributed as dist
from torch import nn

try:
    from torch.compiler import is_compiling as _is_compiling
except ImportError:  # torch 2.1 and 2.2 have it only under its older name
    from torch._dynamo import is_compiling as _is_compiling

__all__ = ["CenterLoss"]

# Bounds of each sample's squared distance, as in the popular implementation
# (KaiyangZhou/pytorch-center-loss), which clamps its masked distance matrix.
_MIN_DIST, _MAX_DIST = 1e-12, 1e12

_warned_no_cuda = False

# Backward passes that reach the centers without them changing before CenterLoss warns
# that they have no optimizer: above any sensible gradient accumulation.
_STALE_STEPS = 100


class CenterLoss(nn.Module):
    r"""Center loss with learnable class centers (Wen et al., ECCV 2016).

    For features :math:`x_i` with labels :math:`y_i` and class centers :math:`c_j`,
    the per-sample loss is the squared Euclidean distance to the sample's own center,

    .. math::
        \ell_i = \operatorname{clamp}\big(\lVert x_i - c_{y_i} \rVert_2^2,\ 10^{-12},\ 10^{12}\big)

    and ``reduction='mean'`` (default) gives :math:`L_C = \frac{1}{B}\sum_i \ell_i`: the
    popular implementation's value, less the constant :math:`(C-1) \cdot 10^{-12}` that
    clamping its masked B x C distance matrix adds. The paper's
    :math:`L_C = \frac{1}{2}\sum_i \lVert x_i - c_{y_i}\rVert^2` (eq. 2) differs by a
    constant factor, which the weight :math:`\lambda` of :math:`L = L_S + \lambda L_C`
    (eq. 5) absorbs. Distances are computed in float32 or wider (also under autocast).

    The centers are an ``nn.Parameter`` with an optimizer of their own; ``update``
    chooses the gradient they receive:

    * ``'grad'`` (default, as the popular implementation): the gradient of the loss,
      :math:`\partial L_C / \partial c_j`.
    * ``'paper'`` (Algorithm 1, eq. 4):
      :math:`\Delta c_j = \frac{\sum_{i: y_i = j} (c_j - x_i)}{1 + n_j}`, with
      :math:`n_j` the samples of class :math:`j` in the batch, times the factor by
      which the loss was scaled before backward (e.g. :math:`\lambda`). After the
      :math:`1/\lambda` rescaling below, ``SGD(lr=alpha)`` performs exactly
      :math:`c_j \leftarrow c_j - \alpha\,\Delta c_j`, with :math:`\alpha` in [0, 1]
      (the paper uses 0.5).

    In both, the features receive the ordinary gradient :math:`2 (x_i - c_{y_i})`, and
    the training loop multiplies the centers' gradient by :math:`1/\lambda` before
    their step, so that :math:`\lambda` sets how hard features are pulled, not how fast
    the centers move (see the example).

    Args:
        num_classes (int): number of classes C (>= 1). Default: 10.
        feat_dim (int): feature dimension D (>= 1). Default: 2.
        use_gpu (bool): create the centers on the current CUDA device, as the popular
            implementation. Without CUDA this warns once and keeps them on the CPU.
            Default: True.
        reduction (str): ``'mean'`` | ``'sum'`` | ``'none'``. Default: ``'mean'``.
        update (str): ``'grad'`` | ``'paper'``, see above. Default: ``'grad'``.
        sparse (bool): give the centers a sparse gradient, whose rows are the batch's
            labels, for very many classes; step them with plain SGD or SparseAdam.
            Default: False.
        distributed (bool): keep the centers identical across the processes of
            ``torch.distributed``: rank 0's centers are broadcast at the first forward
            and their gradient is averaged over the ranks after each backward (with
            ``'paper'``, :math:`n_j` counts the global batch). Create the module after
            ``init_process_group``, on every rank. Default: False.
        init (str): the centers' start, ``'randn'`` (standard normal, as the popular
            implementation) | ``'zeros'``. Default: ``'randn'``.

    Shape:
        - features: :math:`(B, D)`, floating point.
        - labels: :math:`(B,)`, integer, values in :math:`[0, C)`.
        - output: scalar, or :math:`(B,)` with ``reduction='none'``. An empty batch
          (B = 0) gives 0 (``'mean'``/``'sum'``) and zero gradients.
        - ``centers``: :math:`(C, D)`; the module follows ``.to(device)`` and ``.double()``.

    Raises:
        TypeError: features not a floating-point tensor, labels not an integer tensor,
            or ``num_classes``/``feat_dim`` not an int.
        ValueError: wrong shapes, labels outside ``[0, num_classes)``, features, labels
            and centers on different devices, an unknown ``reduction``/``update``/
            ``init``, ``num_classes``/``feat_dim`` < 1, or ``distributed=True`` before
            ``torch.distributed.init_process_group()``. Messages name the argument and
            the value.

    Pitfalls:
        - Centers without an optimizer never move; after 100 such training steps the
          module warns once (``RuntimeWarning``).
        - Plain SGD for the centers: momentum makes them overshoot, and Adam normalises
          away both the :math:`1/\lambda` rescaling and eq. 4's :math:`1/(1 + n_j)`.
        - One optimizer shared with the model: give the centers a parameter group of
          their own with ``momentum=0, weight_decay=0``, which the scheduler leaves alone.
        - Many classes with ``update='grad'``: the random start is forgotten slowly;
          pass ``init='zeros'`` or use ``update='paper'``.
        - With a ``GradScaler``: ``scaler.unscale_`` the centers' optimizer before the
          :math:`1/\lambda` rescaling, and step it through the scaler.
        - Under ``torch.compile`` labels are not range-checked: a bad label fails in the
          kernel, on CUDA as a device-side assert that ends the process.
        - On CUDA the label range check costs one small device-to-host copy per call.

    Example::

        >>> import torch
        >>> from center_loss import CenterLoss
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(16, 2)              # your network, giving 2-D features
        >>> center_loss = CenterLoss(num_classes=10, feat_dim=2, use_gpu=False)
        >>> weight_cent, lr_cent = 1.0, 0.5             # lambda and the centers' learning rate
        >>> opt_model = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        >>> opt_cent = torch.optim.SGD(center_loss.parameters(), lr=lr_cent)
        >>> x, labels = torch.randn(8, 16), torch.randint(0, 10, (8,))
        >>> features = model(x)
        >>> loss = weight_cent * center_loss(features, labels)  # + your softmax loss
        >>> opt_model.zero_grad(); opt_cent.zero_grad()
        >>> loss.backward()
        >>> for p in center_loss.parameters():
        ...     p.grad.data *= 1.0 / weight_cent  # lambda must not change how fast centers move
        >>> opt_model.step(); opt_cent.step()
        >>> center_loss.centers.shape
        torch.Size([10, 2])
    """

    def __init__(self, num_classes=10, feat_dim=2, use_gpu=True, *,
                 reduction="mean", update="grad", sparse=False, distributed=False, init="randn"):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("feat_dim", feat_dim)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if update not in ("grad", "paper"):
            raise ValueError(f"update must be 'grad' or 'paper', got {update!r}")
        if init not in ("randn", "zeros"):
            raise ValueError(f"init must be 'randn' or 'zeros', got {init!r}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.reduction = reduction
        self.update = update
        self.sparse = bool(sparse)
        self.use_gpu = bool(use_gpu) and _cuda_or_warn()
        device = "cuda" if self.use_gpu else "cpu"
        make = torch.randn if init == "randn" else torch.zeros
        self.centers = nn.Parameter(make(num_classes, feat_dim, device=device))
        self.distributed = bool(distributed)
        if self.distributed:
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("distributed=True needs torch.distributed.init_process_group() "
                                 "to be called first, on every rank")
            self._group = dist.new_group()  # collective: every rank creates the module
            self._broadcast_pending = True
            self.centers.register_post_accumulate_grad_hook(self._average_grad)
        # The forgotten-optimizer check: see _watch_for_a_missing_optimizer.
        self._seen_version, self._stale_steps, self._got_grad = None, 0, False
        self._probe, self._warned_stale, self._grad_hook = None, False, None

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, "
                f"reduction={self.reduction!r}, update={self.update!r}, sparse={self.sparse}, "
                f"distributed={self.distributed}")

    def forward(self, features, labels):
        """
        Args:
            features: (B, D) floating-point features.
            labels: (B,) integer class labels in [0, num_classes).
        """
        self._check(features, labels)
        if not _is_compiling():
            self._watch_for_a_missing_optimizer()
        labels = labels.long()
        # population: the labels that eq. 4's n_j counts; None means this batch's own
        # (passing `labels` twice to the Function would break torch.compile's graph)
        batch, population, world = features.shape[0], None, 1
        if self.distributed:
            world = dist.get_world_size(self._group)
            if self._broadcast_pending:
                with torch.no_grad():
                    dist.broadcast(self.centers.data, src=0, group=self._group)
                self._broadcast_pending = False
            if self.update == "paper":  # n_j over the global batch
                population = _all_gather_rows(labels, self._group)
        # In 'paper' mode each sample's center gradient is weighted back to the scale
        # of the loss: 'mean' divides by B in autograd, so the Function multiplies by B.
        # Under DDP the ranks' gradients are averaged, hence the global batch / world.
        paper_scale = float((batch if population is None else len(population))
                            if self.reduction == "mean" else world)
        per_sample = _CenterDistance.apply(features, self.centers, labels, population,
                                           self.update, self.sparse, paper_scale)
        if self.reduction == "none":
            return per_sample
        loss = per_sample.sum()
        return loss / max(batch, 1) if self.reduction == "mean" else loss

    def _note_grad(self, centers):
        self._got_grad = True

    def _watch_for_a_missing_optimizer(self):
        """Warn once if the centers keep receiving gradients but never change.

        An optimizer's step changes the centers in place, which bumps their version
        counter (reading it costs nothing): in a correct loop that comparison is all
        this does. Once the centers are seen unchanged between two calls, a hook on
        them notes the backward passes that reach them, and `_stale_steps` counts those
        since they last moved. Updates through `.data` and fused optimizers do not bump
        the counter: the values themselves are compared (two sums, only while stale)
        before warning, and such a loop is not watched any further.
        """
        centers = self.centers
        if self._warned_stale or not (self.training and centers.requires_grad
                                      and torch.is_grad_enabled()):
            return
        if centers._version != self._seen_version:
            self._seen_version, self._stale_steps, self._probe = centers._version, 0, None
            self._got_grad = False
            return
        if not self._got_grad:  # no backward reached them yet, or no hook (new, deepcopy)
            hooks = centers._post_accumulate_grad_hooks
            if self._grad_hook is None or self._grad_hook.id not in (hooks or {}):
                self._grad_hook = centers.register_post_accumulate_grad_hook(self._note_grad)
            return
        self._got_grad = False
        self._stale_steps += 1
        if self._stale_steps == _STALE_STEPS // 2:
            self._probe = centers.detach().sum(dtype=torch.float64)
        elif self._stale_steps >= _STALE_STEPS and self._probe is not None:
            self._warned_stale = True  # either way: warned, or updated outside autograd
            if torch.equal(self._probe, centers.detach().sum(dtype=torch.float64)):
                warnings.warn(
                    f"CenterLoss: the centers received gradients in {_STALE_STEPS} training "
                    f"steps but never changed: no optimizer steps them. Give them one, e.g. "
                    f"torch.optim.SGD(center_loss.parameters(), lr=0.5), and call its step() "
                    f"after backward (or put them in a parameter group of the model's "
                    f"optimizer; see the CenterLoss docstring). To keep them fixed, call "
                    f"center_loss.centers.requires_grad_(False).", RuntimeWarning,
                    stacklevel=5)  # the line calling center_loss(...), past nn.Module's

    def _average_grad(self, centers):
        """After backward (distributed=True): average the centers' gradient over ranks."""
        world = dist.get_world_size(self._group)
        grad = centers.grad
        if grad.is_sparse:  # send the batch's rows only: O(B*D), whatever C is
            grad = grad.coalesce()
            rows = _all_gather_rows(grad.indices()[0], self._group)
            values = _all_gather_rows(grad.values(), self._group) / world
            centers.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, grad.shape,
                                                   check_invariants=False)
        else:
            dist.all_reduce(grad, group=self._group)  # SUM: gloo has no AVG
            grad.div_(world)

    def _check(self, features, labels):
        if not isinstance(features, torch.Tensor) or not features.is_floating_point():
            raise TypeError(f"features must be a floating-point tensor, got {_describe(features)}")
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() \
                or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {_describe(labels)}")
        if features.dim() != 2 or features.shape[1] != self.feat_dim:
            raise ValueError(f"features must have shape (batch_size, feat_dim={self.feat_dim}), "
                             f"got {tuple(features.shape)}")
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels must have shape (batch_size,) = ({features.shape[0]},), "
                             f"got {tuple(labels.shape)}")
        if not features.device == labels.device == self.centers.device:
            raise ValueError(f"features ({features.device}), labels ({labels.device}) and centers "
                             f"({self.centers.device}) must be on the same device; move them "
                             f"with .to(device)")
        # Data-dependent: reading the values would break a torch.compile graph, so
        # compiled code skips it (what a bad label does then: see the class docstring).
        if labels.numel() and not _is_compiling():
            lo, hi = torch.stack(torch.aminmax(labels)).tolist()  # the one sync on CUDA
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(f"labels must be in [0, num_classes={self.num_classes}), "
                                 f"got a label {bad}")


class _CenterDistance(torch.autograd.Function):
    """Per-sample clamped ||x_i - c_{y_i}||^2 with the center gradient of `update`."""

    @staticmethod
    def forward(ctx, features, centers, labels, population, update, sparse, paper_scale):
        dtype = torch.promote_types(torch.promote_types(features.dtype, centers.dtype),
                                    torch.float32)
        # Gather before casting, so nothing of size C x D is ever copied.
        diff = features.to(dtype) - centers.index_select(0, labels).to(dtype)
        raw = diff.pow(2).sum(dim=1)
        in_range = (raw >= _MIN_DIST) & (raw <= _MAX_DIST)
        ctx.save_for_backward(diff, labels, in_range, *(() if population is None else (population,)))
        ctx.meta = (update, sparse, paper_scale, centers.shape, centers.dtype, features.dtype)
        return raw.clamp(_MIN_DIST, _MAX_DIST)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_dist):
        diff, labels, in_range, *population = ctx.saved_tensors
        population = population[0] if population else labels
        update, sparse, paper_scale, centers_shape, centers_dtype, features_dtype = ctx.meta
        grad = grad_dist.to(diff.dtype)
        # d/dx of clamp(||x - c||^2): zero where the clamp is active, as autograd of clamp.
        grad_x = diff * (2 * grad * in_range).unsqueeze(1)
        grad_features = grad_x.to(features_dtype) if ctx.needs_input_grad[0] else None
        if not ctx.needs_input_grad[1]:
            return grad_features, None, None, None, None, None, None
        if update == "grad":
            rows = -grad_x
        else:  # eq. 4: sum_{i: y_i=j} (c_j - x_i) / (1 + n_j), times the loss scale
            own = _count_of_own_label(labels, population)
            rows = diff * (-paper_scale * grad / (1 + own)).unsqueeze(1)
        rows = rows.to(centers_dtype)
        if sparse:
            grad_centers = torch.sparse_coo_tensor(labels.unsqueeze(0), rows, centers_shape,
                                                   check_invariants=False)
        else:
            grad_centers = rows.new_zeros(centers_shape).index_add_(0, labels, rows)
        return grad_features, grad_centers, None, None, None, None, None


def _count_of_own_label(labels, population):
    """n_{y_i} for each sample: how many labels of `population` (the batch, or the
    global batch under DDP) equal its label.

    O(B log B) by sorting, no O(C) buffer and no host synchronisation on CUDA.
    """
    ordered = population.sort().values
    right = torch.searchsorted(ordered, labels, right=True)
    left = torch.searchsorted(ordered, labels)
    return right - left


def _all_gather_rows(tensor, group):
    """Concatenate every rank's `tensor` along dim 0; shards may differ in length."""
    world = dist.get_world_size(group)
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(n) for n in sizes]
    padded = tensor.new_zeros((max(sizes),) + tensor.shape[1:])
    padded[:tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)])


def _cuda_or_warn():
    global _warned_no_cuda
    if torch.cuda.is_available():
        return True
    if not _warned_no_cuda:
        warnings.warn("CenterLoss(use_gpu=True) but CUDA is not available: the centers stay on "
                      "the CPU (move them with .to(device))", RuntimeWarning, stacklevel=3)
        _warned_no_cuda = True
    return False


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {value.dtype}"
    return f"{type(value).__name__}"
