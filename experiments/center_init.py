"""Does the centers' initialisation matter beyond the first hundred steps?

    python experiments/center_init.py              # D=512, 1,000 classes, 1,000 steps

A wide-feature stand-in for face recognition / re-identification: 1,000 identities whose
inputs are a 64-D prototype plus noise (fresh samples every step, as from a large data
set), an MLP 64 -> 512 -> 512 giving D=512 features, a linear softmax classifier, and
softmax + lambda * center loss. The model trains with Adam (as reid-strong-baseline), the
centers with their own plain SGD and the 1/lambda rescaling (lr 0.5, or the paper's
alpha = 0.5 with update='paper'). Each run starts from the same model weights (per seed)
and differs only in the centers' initialisation:

- randn: CenterLoss's default (as the popular implementation), norm about sqrt(D) = 22.6;
- zeros (as facenet);
- first batch: the first batch's class means, under no_grad before the first step; the
  classes absent from it (most of them, with 1,000 classes and B=256) get the batch's mean.

A second randn seed (other model weights, centers and data) shows the run-to-run noise.
Printed at a few steps, on 10 held-out samples per class:

- center loss: mean ||x_i - c_{y_i}||^2 of the held-out features (what the loss sees);
- center lag: mean over classes of ||c_j - mu_j|| / the classes' RMS radius, mu_j the
  held-out class mean (0: centers sit at the class means);
- intra/inter: mean squared distance to the own class mean over the mean squared distance
  between class means (lower: more discriminative features);
- accuracy of the softmax classifier.
"""
import argparse
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from center_loss import CenterLoss  # noqa: E402


def make_task(num_classes, in_dim, noise, seed):
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, in_dim, generator=gen)

    def sample(labels, gen):
        return prototypes[labels] + noise * torch.randn(len(labels), in_dim, generator=gen)

    held_labels = torch.arange(num_classes).repeat_interleave(10)
    return sample, held_labels, sample(held_labels, gen)


class Net(nn.Module):
    def __init__(self, in_dim, feat_dim, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, 512), nn.ReLU(), nn.Linear(512, feat_dim))
        self.classifier = nn.Linear(feat_dim, num_classes)

    def forward(self, x):
        features = self.body(x)
        return features, self.classifier(features)


@torch.no_grad()
def measure(net, loss_fn, held_x, held_y, num_classes):
    features, logits = net(held_x)
    centers = loss_fn.centers
    means = torch.zeros_like(centers).index_add_(0, held_y, features) / 10
    intra = (features - means[held_y]).pow(2).sum(1)
    radius = intra.mean().sqrt()
    inter = torch.pdist(means).pow(2).mean()
    return {"center loss": (features - centers[held_y]).pow(2).sum(1).mean().item(),
            "center lag": ((centers - means).norm(dim=1).mean() / radius).item(),
            "intra/inter": (intra.mean() / inter).item(),
            "accuracy": (logits.argmax(1) == held_y).float().mean().item() * 100}


def run(init, update, seed, args, checkpoints):
    sample, held_y, held_x = make_task(args.classes, 64, args.noise, seed=0)
    torch.manual_seed(seed)
    net = Net(64, args.feat_dim, args.classes)
    loss_fn = CenterLoss(args.classes, args.feat_dim, use_gpu=False, update=update)
    gen = torch.Generator().manual_seed(seed)
    first_y = torch.randint(0, args.classes, (args.batch,), generator=gen)
    first_x = sample(first_y, gen)
    with torch.no_grad():
        if init == "zeros":
            loss_fn.centers.zero_()
        elif init == "first batch":
            features, _ = net(first_x)
            sums = torch.zeros_like(loss_fn.centers).index_add_(0, first_y, features)
            counts = torch.bincount(first_y, minlength=args.classes).unsqueeze(1)
            loss_fn.centers.copy_(torch.where(counts > 0, sums / counts.clamp(min=1),
                                              features.mean(0)))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    opt_cent = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    xent, rows = nn.CrossEntropyLoss(), {}
    x, y = first_x, first_y
    for step in range(1, max(checkpoints) + 1):
        features, logits = net(x)
        loss = xent(logits, y) + args.weight_cent * loss_fn(features, y)
        opt.zero_grad()
        opt_cent.zero_grad()
        loss.backward()
        for p in loss_fn.parameters():
            p.grad.data *= 1.0 / args.weight_cent
        opt.step()
        opt_cent.step()
        if step in checkpoints:
            rows[step] = measure(net, loss_fn, held_x, held_y, args.classes)
        y = torch.randint(0, args.classes, (args.batch,), generator=gen)
        x = sample(y, gen)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--feat-dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--weight-cent", type=float, default=0.01, help="lambda")
    p.add_argument("--lr", type=float, default=1e-3, help="the model's Adam learning rate")
    p.add_argument("--noise", type=float, default=1.0, help="input noise std per dimension")
    p.add_argument("--updates", default="grad,paper")
    args = p.parse_args()
    checkpoints = sorted({s for s in (10, 100, 500, args.steps) if s <= args.steps})
    start = time.time()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; C={args.classes}, "
          f"D={args.feat_dim}, B={args.batch}, lambda={args.weight_cent}, Adam lr {args.lr}, "
          f"centers SGD lr 0.5")
    print("| update | init | seed | step | center loss | center lag | intra/inter | accuracy (%) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for update in args.updates.split(","):
        for init, seed in (("randn", 0), ("randn", 1), ("zeros", 0), ("first batch", 0)):
            rows = run(init, update, seed, args, checkpoints)
            for step, m in rows.items():
                print(f"| {update} | {init} | {seed} | {step} | {m['center loss']:.2f} | "
                      f"{m['center lag']:.2f} | {m['intra/inter']:.4f} | {m['accuracy']:.1f} |",
                      flush=True)
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
