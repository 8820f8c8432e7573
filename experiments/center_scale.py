"""How strongly center loss pulls at a given λ, on the raw feature and on its L2-normalised
direction: the λ that gives the normalised loss the raw one's pull (--center-feature).

    python experiments/center_scale.py --checkpoint RUN/checkpoint.pth.tar --data-root ./data

From an LFW run's checkpoint, the training images' features (training-mode batches of 128,
no step taken) and each person's mean feature, raw and normalised. Printed: the features'
mean squared norm, the mean squared distance to the class mean (the loss per unit λ), and
the mean size of the loss's gradient with respect to the feature per unit λ: 2 |x - c| raw,
2 |P (x/|x| - c)| / |x| normalised (P removes the part along x, which normalising drops).
The λ that matches the raw run's gradient on the normalised feature is their ratio times
the run's λ.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import datasets  # noqa: E402
import models  # noqa: E402
import utils  # noqa: E402


def training_features(ckpt, data_root):
    a = ckpt["args"]
    size = a.get("input_size", 64)
    d = datasets.create("lfw", 128, False, root=data_root, seed=a["seed"],
                        lfw_split=a["lfw_split"], lfw_min_images=a["lfw_min_images"],
                        input_size=size)
    model = models.create(a["model"], d.num_classes, feat_dim=a["feat_dim"], input_size=size)
    model.load_state_dict(ckpt["model"])
    model.train()  # the features the loss sees while training
    xs, ys = [], []
    with torch.no_grad():
        for x, y in d.trainloader:
            xs.append(model(x)[0])
            ys.append(y)
    return torch.cat(xs), torch.cat(ys), d.num_classes


def class_means(x, y, k):
    sums = torch.zeros(k, x.shape[1]).index_add_(0, y, x)
    return sums / torch.bincount(y, minlength=k).clamp(min=1)[:, None].float()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", default="./data")
    args = p.parse_args()
    ckpt = utils.load_checkpoint(args.checkpoint, "cpu")
    x, y, k = training_features(ckpt, args.data_root)
    xn = F.normalize(x, dim=1)
    raw, dn = x - class_means(x, y, k)[y], xn - class_means(xn, y, k)[y]
    tangent = dn - (dn * xn).sum(1, keepdim=True) * xn
    g_raw = (2 * raw.norm(dim=1)).mean().item()
    g_norm = (2 * tangent.norm(dim=1) / x.norm(dim=1)).mean().item()
    lam = ckpt["args"]["weight_cent"]
    print(f"{args.checkpoint}: {len(x):,} training images, {x.shape[1]}-D, λ {lam:g}")
    print(f"mean |x|^2 {(x.norm(dim=1) ** 2).mean():.1f}; mean squared distance to the class "
          f"mean: raw {(raw.norm(dim=1) ** 2).mean():.2f}, normalised {(dn.norm(dim=1) ** 2).mean():.4f}")
    print(f"gradient per unit λ: raw {g_raw:.3f}, normalised {g_norm:.4f}; the normalised "
          f"feature's λ for the raw run's pull: {lam:g} x {g_raw / g_norm:.1f} = "
          f"{lam * g_raw / g_norm:.3g}")


if __name__ == "__main__":
    main()
