"""The networks: LeNet++ (Wen et al. 2016, Fig. 2 / Table 1 of the supplement), whose 2-D
features the center-loss figures show, and a residual network for LFW's face crops; and
the margin softmaxes that face recognition puts beside center loss today (CosFace, ArcFace).

LeNet++'s parameter names match the popular implementation's ConvNet, so its checkpoints
load. Every network's ``forward`` returns ``(features (N, feat_dim), logits (N, C))``:
center loss takes the features, the classification loss the logits.
"""
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvNet", "FaceResNet", "CosFace", "CosFaceLoss", "ArcFaceLoss", "create", "MODELS",
           "HEADS"]

HEADS = ("softmax", "cosface", "arcface")


class CosFace(nn.Module):
    r"""The classifier of CosFace (Wang et al., CVPR 2018; insightface's arcface_torch):
    :math:`\cos\theta_j = \hat{x} \cdot \hat{W}_j`, the cosine between the L2-normalised
    feature and the L2-normalised weight of class j, with no bias. Its outputs are the
    logits that test accuracy takes the argmax of; `CosFaceLoss` adds margin and scale."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, std=0.01)  # as arcface_torch's PartialFC

    def forward(self, x):
        return F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))


class CosFaceLoss(nn.Module):
    r"""Large margin cosine loss (CosFace, Wang et al., CVPR 2018, eq. 4):

    .. math::
        L = -\frac{1}{N}\sum_i \log \frac{e^{s(\cos\theta_{y_i} - m)}}
            {e^{s(\cos\theta_{y_i} - m)} + \sum_{j \ne y_i} e^{s\cos\theta_j}}

    Args:
        scale: s, the radius the normalised features are put on. Default: 64, as the
            paper and arcface_torch.
        margin: m, subtracted from the target cosine. Default: 0.35, the paper's.

    Shape: cosines (N, C) from `CosFace`, labels (N,) int64; the loss a scalar.
    """

    def __init__(self, scale=64.0, margin=0.35):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        if not 0 <= margin < 2:
            raise ValueError(f"margin must be in [0, 2), got {margin!r}")
        self.scale, self.margin = scale, margin

    def forward(self, cosines, labels):
        target = F.one_hot(labels, cosines.shape[1]).to(cosines.dtype)
        return F.cross_entropy(self.scale * (cosines - self.margin * target), labels)


class ArcFaceLoss(nn.Module):
    r"""Additive angular margin loss (ArcFace, Deng et al., CVPR 2019, eq. 3), on the
    cosines of `CosFace`'s classifier:

    .. math::
        L = -\frac{1}{N}\sum_i \log \frac{e^{s\cos(\theta_{y_i} + m)}}
            {e^{s\cos(\theta_{y_i} + m)} + \sum_{j \ne y_i} e^{s\cos\theta_j}}

    Where :math:`\theta_{y_i} + m` would pass :math:`\pi` the target logit is
    :math:`\cos\theta_{y_i} - m\sin m` instead, so that it keeps falling with the angle
    (the paper's code and insightface's arcface_torch do the same).

    Args:
        scale: s. Default: 64, as the paper and arcface_torch.
        margin: m, in radians, added to the target angle. Default: 0.5, the paper's.

    Shape: cosines (N, C) from `CosFace`, labels (N,) int64; the loss a scalar.
    """

    def __init__(self, scale=64.0, margin=0.5):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        if not 0 <= margin < math.pi / 2:
            raise ValueError(f"margin must be in [0, pi/2), got {margin!r}")
        self.scale, self.margin = scale, margin

    def forward(self, cosines, labels):
        cos = cosines.gather(1, labels[:, None]).clamp(-1, 1)
        sin = (1 - cos * cos).clamp(min=0).sqrt()
        m = self.margin
        shifted = cos * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        shifted = torch.where(cos > math.cos(math.pi - m), shifted, cos - m * math.sin(m))
        logits = cosines.scatter(1, labels[:, None], shifted)
        return F.cross_entropy(self.scale * logits, labels)


def margin_loss(head, scale, margin):
    """The classification loss of a margin head (CosFaceLoss or ArcFaceLoss)."""
    return (ArcFaceLoss if head == "arcface" else CosFaceLoss)(scale=scale, margin=margin)


def classifier(feat_dim, num_classes, head="softmax"):
    """The last layer: a linear softmax classifier, or the cosines of a margin head
    (CosFace and ArcFace share it; their losses differ)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    return nn.Linear(feat_dim, num_classes) if head == "softmax" else CosFace(feat_dim, num_classes)


class ConvNet(nn.Module):
    """Three stages of two 5x5 convolutions (padding 2, each followed by PReLU) with
    32, 64 and 128 channels, 2x2 max-pooling after each stage, a linear layer to the
    feature (followed by PReLU) and a linear classifier.

    Input (N, 1, 28, 28); ``forward`` returns ``(features (N, feat_dim), logits (N, C))``.
    """

    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10, feat_dim=2, head="softmax"):
        super().__init__()
        self.conv1_1 = nn.Conv2d(1, 32, 5, stride=1, padding=2)
        self.prelu1_1 = nn.PReLU()
        self.conv1_2 = nn.Conv2d(32, 32, 5, stride=1, padding=2)
        self.prelu1_2 = nn.PReLU()
        self.conv2_1 = nn.Conv2d(32, 64, 5, stride=1, padding=2)
        self.prelu2_1 = nn.PReLU()
        self.conv2_2 = nn.Conv2d(64, 64, 5, stride=1, padding=2)
        self.prelu2_2 = nn.PReLU()
        self.conv3_1 = nn.Conv2d(64, 128, 5, stride=1, padding=2)
        self.prelu3_1 = nn.PReLU()
        self.conv3_2 = nn.Conv2d(128, 128, 5, stride=1, padding=2)
        self.prelu3_2 = nn.PReLU()
        # 28 -> 14 -> 7 -> 3 after three 2x2 poolings
        self.fc1 = nn.Linear(128 * 3 * 3, feat_dim)
        self.prelu_fc1 = nn.PReLU()
        self.fc2 = classifier(feat_dim, num_classes, head)

    def forward(self, x):
        x = self.prelu1_1(self.conv1_1(x))
        x = self.prelu1_2(self.conv1_2(x))
        x = F.max_pool2d(x, 2)
        x = self.prelu2_1(self.conv2_1(x))
        x = self.prelu2_2(self.conv2_2(x))
        x = F.max_pool2d(x, 2)
        x = self.prelu3_1(self.conv3_1(x))
        x = self.prelu3_2(self.conv3_2(x))
        x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        features = self.prelu_fc1(self.fc1(x))
        logits = self.fc2(features)
        return features, logits


class BasicBlock(nn.Module):
    """He et al.'s basic residual block (two 3x3 convolutions), with PReLU as the face
    ResNets of SphereFace and insightface use."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class FaceResNet(nn.Module):
    """A small ResNet for 3 x 64 x 64 face crops, sized for CPUs (docs/lfw.md): a 3x3
    stem of stride 2 (32 x 32 x `widths[0]`), four stages of `blocks` basic blocks with
    `widths` channels, each but the first halving the size (down to 4 x 4), then the
    feature layer as in insightface's face ResNets: a linear layer to `feat_dim` and batch
    norm; and the classifier (`head`).

    With blocks (1, 1, 1, 1) (``resnet10``: 9 convolutions and the feature layer) and
    feat_dim 512 it has 3.33 M parameters before the classifier and takes 0.13 GFLOPs
    (2 x multiply-adds) a 64 x 64 image; ``resnet18`` (2, 2, 2, 2): 4.89 M and 0.28.

    Input (N, 3, input_size, input_size), 64 by default; the feature layer reads the last
    stage's whole map (4 x 4 at 64, 7 x 7 at 112, as insightface's flattened 7 x 7);
    ``forward`` returns ``(features (N, feat_dim), logits (N, C))``.
    """

    input_shape = (3, 64, 64)

    def __init__(self, num_classes, feat_dim=512, head="softmax", blocks=(1, 1, 1, 1),
                 widths=(32, 64, 128, 256), input_size=64):
        super().__init__()
        if input_size % 2 ** len(widths):
            raise ValueError(f"input_size must be a multiple of {2 ** len(widths)}, got "
                             f"{input_size!r}")
        self.input_shape = (3, input_size, input_size)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
        layers, cin = [], widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.body = nn.Sequential(*layers)
        side = self.input_shape[1] // 2 ** len(widths)
        self.fc = nn.Linear(cin * side * side, feat_dim)
        self.features = nn.BatchNorm1d(feat_dim)
        self.classifier = classifier(feat_dim, num_classes, head)

    def forward(self, x):
        x = self.body(self.stem(x))
        features = self.features(self.fc(x.flatten(1)))
        return features, self.classifier(features)


MODELS = {"cnn": ConvNet,
          "resnet10": functools.partial(FaceResNet, blocks=(1, 1, 1, 1)),
          "resnet18": functools.partial(FaceResNet, blocks=(2, 2, 2, 2))}


def create(name, num_classes, **kwargs):
    """Build model `name` (one of MODELS) for `num_classes` classes."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](num_classes=num_classes, **kwargs)


def input_shape(name):
    """The (C, H, W) of one input image of model `name`."""
    model = MODELS[name]
    return getattr(model, "func", model).input_shape
