"""Center loss (Wen et al., "A Discriminative Feature Learning Approach for Deep
Face Recognition", ECCV 2016), exact, drop-in and O(B*D) at any class count.

This file depends on torch only: copy it into your project as it is.

    >>> import torch
    >>> from center_loss import CenterLoss
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
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
    ...     p.grad.data *= 1.0 / weight_cent        # lambda must not change how fast centers move
    >>> opt_model.step(); opt_cent.step()
    >>> center_loss.centers.shape
    torch.Size([10, 2])
"""
import warnings

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["CenterLoss"]

# Bounds of each sample's squared distance, as in the popular implementation
# (KaiyangZhou/pytorch-center-loss), which clamps its masked distance matrix.
_MIN_DIST, _MAX_DIST = 1e-12, 1e12

_warned_no_cuda = False

# Backward passes that reach the centers without them changing before CenterLoss warns
# that they have no optimizer: above any sensible gradient accumulation.
_STALE_STEPS = 100


class CenterLoss(nn.Module):
    r"""Center loss with learnable class centers.

    For features :math:`x_i` with labels :math:`y_i` and class centers :math:`c_j`,
    the per-sample loss is the squared Euclidean distance to the sample's own center,

    .. math::
        \ell_i = \operatorname{clamp}\big(\lVert x_i - c_{y_i} \rVert_2^2,\ 10^{-12},\ 10^{12}\big)

    and ``reduction='mean'`` (default) gives :math:`L_C = \frac{1}{B}\sum_i \ell_i`.
    The paper writes :math:`L_C = \frac{1}{2}\sum_i \lVert x_i - c_{y_i}\rVert^2` (eq. 2);
    the factor 1/2 (and 1/B) is absorbed by the weight :math:`\lambda` of
    :math:`L = L_S + \lambda L_C` (eq. 5). ``'mean'`` equals the popular PyTorch
    implementation's value, which builds a B x C distance matrix, masks it with the
    labels and clamps it: there, each of the B*(C-1) masked-out entries is clamped up to
    1e-12, adding the constant (C-1)*1e-12 (no gradient) that this class leaves out.

    Only the label's center is gathered, so forward and backward take O(B*D) time and
    memory (the popular version: O(B*C*D) time and O(B*C) memory). Distances are computed
    in float32 or wider: float16/bfloat16 features (e.g. under ``torch.autocast``) are
    upcast, so large distances do not overflow; float64 stays float64. The centers keep
    their own dtype and device: the module follows ``.to(device)`` / ``.double()``.

    **Center updates.** The centers are an ``nn.Parameter``; how they move is chosen by
    ``update``:

    * ``'grad'`` (default, as the popular implementation): the centers receive the
      autograd gradient of the loss, :math:`\partial L_C/\partial c_j`. Because the
      total loss is scaled by :math:`\lambda`, training code multiplies the centers'
      gradient by :math:`1/\lambda` before their optimizer step, so :math:`\lambda` sets
      how hard features are pulled without changing how fast the centers move.
    * ``'paper'``: Wen et al., Algorithm 1 and eq. 4. After ``loss.backward()`` the
      centers' gradient is

      .. math::
          \Delta c_j = \frac{\sum_{i: y_i = j} (c_j - x_i)}{1 + n_j}

      (:math:`n_j` = samples of class :math:`j` in the batch; 0 for absent classes),
      times the factor by which the scalar loss was scaled before backward (e.g.
      :math:`\lambda`). The same :math:`1/\lambda` rescaling followed by
      ``SGD(lr=alpha)`` then performs exactly :math:`c_j \leftarrow c_j - \alpha\,\Delta c_j`,
      for ``'mean'`` and ``'sum'`` alike. The :math:`1+n_j` damps the step of classes
      with many samples in the batch, so ``alpha`` in [0, 1] never overshoots the class
      mean. With ``reduction='none'``, each sample's term is weighted by the gradient
      that reaches it, as for ``'sum'``.

    Use ``'grad'`` to reproduce the popular implementation's results and
    hyper-parameters (``lr_cent=0.5``); use ``'paper'`` to follow the paper, where
    ``alpha`` (the centers' learning rate) is in [0, 1] (the paper uses 0.5).
    In both modes the gradient with respect to the features is the ordinary one,
    :math:`2 (x_i - c_{y_i})` times the incoming gradient.

    **Initialisation.** By default the centers start from a standard normal, as in the
    popular implementation: norm about :math:`\sqrt{D}` (22.6 at D = 512), often far
    from the features. With ``update='paper'`` a center moves
    :math:`\alpha\, n_j / (1 + n_j)` of the way to its batch mean each time its class
    appears, and the start is forgotten within the first hundred steps. With
    ``update='grad'`` and ``SGD(lr=lr_cent)`` each sample moves its center by only
    ``2 * lr_cent / B`` of the distance (B: the batch size), so a center forgets its
    start after about ``B / (2 * lr_cent)`` samples of its class, which take about
    ``C / (2 * lr_cent)`` steps with C classes (``lr_cent = 0.5``: 10 steps with 10
    classes, 1,000 with 1,000). Measured with
    ``experiments/center_init.py`` (D = 512, 1,000 classes, B = 256, the model with Adam,
    lambda = 0.01): after 1,000 steps, randn centers were still 1.36 class radii from
    their class means against 0.51 when started at zeros, the held-out center loss was
    98 against 31, and the features' intra/inter-class distance ratio 0.405 against
    0.366 (a second randn seed: 0.403); the first batch's class means did as zeros
    (0.52, 0.366). With ``update='paper'`` all three starts ended equal (ratio 0.341,
    0.341, 0.341; second seed 0.340). So with many classes and ``update='grad'``, pass
    ``init='zeros'`` (as facenet does), or use ``update='paper'``; the default stays
    randn for drop-in compatibility.

    **Optimizers.** The ``1/lambda`` rescaling above assumes a plain ``torch.optim.SGD``
    for the centers, which is what the popular implementation and the paper use.

    * SGD with momentum ``m``: SGD is linear in the gradient, so the rescaling still
      keeps :math:`\lambda` from changing how the centers move, but their steady step
      becomes ``lr / (1 - m)`` and they can overshoot; with ``update='paper'`` the step is no
      longer :math:`c_j - \alpha\,\Delta c_j`. Give the centers no momentum.
    * Adam / AdamW: Adam divides each coordinate's step by the running RMS of its
      gradient, so the rescaling does nothing (over 20 steps the centers differ by less
      than 1e-4 of what the rescaling changes under SGD), and neither does
      :math:`\lambda`: each coordinate moves up to about ``lr`` per step whatever the
      gradient's size, and ``update='paper'``'s :math:`1/(1+n_j)` is normalised away too.
      Instead, give the centers their own plain SGD (as reid-strong-baseline: the model
      with Adam, the centers with ``SGD(lr=0.5)``); with Adam on them, pick ``lr`` as a
      step length in feature units and set ``weight_decay=0`` (AdamW's default 0.01
      pulls every center, also those of classes absent from the batch, towards 0).
    * One optimizer shared with the model: the centers inherit its momentum, weight
      decay and schedule. Weight decay ``wd`` shrinks the centers of classes absent from
      the batch by about ``lr * wd / (1 - m)`` per step (``SGD(lr=0.1, momentum=0.9,
      weight_decay=5e-4)``: x0.61 in 1,000 steps), and the popular
      ``lr_cent / (alpha * lr)`` gradient scaling is wrong as soon as a scheduler
      changes ``lr``. Done right, the centers get a parameter group of their own, and
      the scheduler leaves it alone; this equals the two-optimizer loop exactly::

          optimizer = torch.optim.SGD([
              {"params": model.parameters()},
              {"params": center_loss.parameters(), "lr": lr_cent, "momentum": 0,
               "weight_decay": 0},
          ], lr=0.1, momentum=0.9, weight_decay=5e-4)
          scheduler = torch.optim.lr_scheduler.LambdaLR(
              optimizer, [lambda epoch: 0.5 ** (epoch // 20), lambda epoch: 1.0])
          # then: loss.backward(); centers' grad *= 1 / weight_cent; optimizer.step()

      (A model trained with Adam cannot hold an SGD group: use two optimizers.)

    **A forgotten optimizer** is the popular implementation's most reported problem
    ("the center loss does not decrease"). In training mode, when backward passes
    reach the centers 100 times in a row without the centers changing (their in-place
    version counter, which an optimizer's step bumps, then their values), the module
    warns once (``RuntimeWarning``) that no optimizer steps them. Nothing is checked in
    eval mode, under ``torch.no_grad()``, with frozen centers
    (``centers.requires_grad_(False)``) or while compiling. In a correct loop the check
    is one comparison of the version counter per call (no measurable step time:
    ``benchmarks/README.md``); only once the centers are seen unchanged between
    two calls does a hook on them count backward passes (and two sums over the centers
    confirm, before warning, that they did not move through ``.data`` or a fused
    optimizer, which leave the counter alone).

    **Mixed precision.** Under ``torch.autocast`` the loss is computed in float32 (see
    above). With a ``torch.amp.GradScaler`` and a separate center optimizer, unscale the
    centers' gradient before the :math:`1/\lambda` rescaling and step both optimizers
    through the scaler::

        scaler = torch.amp.GradScaler("cuda")          # "cpu" works too
        with torch.autocast("cuda", dtype=torch.float16):
            features, logits = model(images)
            loss = criterion(logits, labels) + weight_cent * center_loss(features, labels)
        optimizer.zero_grad(); optimizer_centloss.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer_centloss)            # the centers' true gradient now
        for p in center_loss.parameters():
            p.grad.data *= 1.0 / weight_cent
        scaler.step(optimizer); scaler.step(optimizer_centloss)
        scaler.update()

    ``optimizer_centloss.step()`` in place of ``scaler.step(optimizer_centloss)`` would
    skip the unscaling and move the centers ``scale`` (65536 at first) times too far;
    ``scaler.step`` also skips the centers' step when their gradient overflowed. In the
    tests' loop the center update then equals the float32 loop's, for both update
    rules, to 2e-4 of its size with float16 and 1.3e-3 with bfloat16 (bfloat16 needs no
    scaler, but using one is harmless).

    **torch.compile.** ``torch.compile(center_loss, fullgraph=True)`` traces the module
    into one graph (no graph break) with the default arguments and either ``update``;
    forward and backward equal eager's. While compiling, the label range
    check is skipped (it needs the labels' values on the host: a graph break, and a
    synchronisation on CUDA), and so is the forgotten-optimizer check. An out-of-range
    label then fails inside the compiled kernel: on the CPU a ``RuntimeError`` "index
    out of bounds" (Inductor's bounds check); on CUDA Inductor's check is a device-side
    assert, which ends the process (not tried here). Check labels in your data pipeline,
    or run the first epoch eagerly. ``sparse=True`` stays eager: the sparse gradient
    cannot be traced, so ``fullgraph=True`` raises and plain ``torch.compile`` runs the
    loss eagerly (a graph break). ``distributed=True`` has not been tried compiled.

    **Distributed data parallel.** With ``distributed=True`` (create the module after
    ``torch.distributed.init_process_group``, on every rank), each rank passes its own
    shard of the global batch and the module keeps the centers identical everywhere:
    the first forward broadcasts rank 0's centers; after each backward the centers'
    gradient is averaged over the ranks, as DDP does for the model's (all-reduce of
    C x D floats; with ``sparse=True`` an all-gather of the shards' rows, O(B*D) and
    independent of C); with ``update='paper'`` the counts :math:`n_j` are taken over
    the global batch (an all-gather of the B labels in forward). With equal shards
    and a per-rank ``'mean'`` loss, every rank then holds exactly the centers (and,
    under DDP, the model) a single process would have with the global batch. The
    collectives use a process group of their own, so they never interleave with DDP's.

    **Sparse gradients.** With ``sparse=True`` the centers' gradient is a sparse COO
    tensor whose rows are the batch's labels (as ``nn.Embedding(sparse=True)`` gives),
    so a step costs the same at 10^6 classes as at 10^3. It works with a plain
    ``torch.optim.SGD`` (no momentum or weight decay) or ``torch.optim.SparseAdam`` on
    the centers, and with ``p.grad.data *= 1 / weight_cent``. Its dense value equals
    the dense mode's.

    Args:
        num_classes (int): number of classes C (>= 1). Default: 10.
        feat_dim (int): feature dimension D (>= 1). Default: 2.
        use_gpu (bool): create the centers on the current CUDA device, as the popular
            implementation. Without CUDA this warns once and keeps them on the CPU.
            Default: True.
        reduction (str): ``'mean'`` | ``'sum'`` | ``'none'``. Default: ``'mean'``.
        update (str): ``'grad'`` | ``'paper'``, see above. Default: ``'grad'``.
        sparse (bool): give the centers a sparse gradient. Default: False.
        distributed (bool): keep the centers in sync across the processes of
            ``torch.distributed``, see above. Default: False.
        init (str): the centers' start, ``'randn'`` (standard normal, as the popular
            implementation) | ``'zeros'``; see *Initialisation* above. Default: ``'randn'``.

    Shape:
        - features: :math:`(B, D)`, floating point.
        - labels: :math:`(B,)`, integer, values in :math:`[0, C)`.
        - output: scalar, or :math:`(B,)` with ``reduction='none'``. An empty batch
          (B = 0) gives 0 (``'mean'``/``'sum'``) and zero gradients.
        - ``centers``: :math:`(C, D)`, by default initialised from a standard normal
          as in the popular implementation (whose ``state_dict`` loads into this class).

    Errors: ``TypeError``/``ValueError`` naming the argument and the value, for
    wrongly shaped or typed inputs, labels out of range and tensors on different
    devices. Shape, dtype and device checks read metadata only and cost nothing. The
    label range check reads the labels' min and max: on CUDA this is one small
    device-to-host copy (a synchronisation) per call. It replaces an indexing error
    that on CUDA is a device-side assert which kills the process.
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
        if not torch.compiler.is_compiling():
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
        if labels.numel() and not torch.compiler.is_compiling():
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
