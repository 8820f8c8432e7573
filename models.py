"""LeNet++ (Wen et al. 2016, Fig. 2 / Table 1 of the supplement): the network whose
2-D features the center-loss figures show.

Parameter names match the popular implementation's ConvNet, so its checkpoints load.
"""
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvNet", "create", "MODELS"]


class ConvNet(nn.Module):
    """Three stages of two 5x5 convolutions (padding 2, each followed by PReLU) with
    32, 64 and 128 channels, 2x2 max-pooling after each stage, a linear layer to the
    feature (followed by PReLU) and a linear classifier.

    Input (N, 1, 28, 28); ``forward`` returns ``(features (N, feat_dim), logits (N, C))``.
    """

    def __init__(self, num_classes=10, feat_dim=2):
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
        self.fc2 = nn.Linear(feat_dim, num_classes)

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


MODELS = {"cnn": ConvNet}


def create(name, num_classes, **kwargs):
    """Build model `name` (one of MODELS) for `num_classes` classes."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](num_classes=num_classes, **kwargs)
