"""When does center loss help? The paper's Figures 3 and 5, measured with main.py.

    python experiments/study.py --data-root ./data              # every run, then figures
    python experiments/study.py --data-root ./data --gpu 0      # main.py flags pass through
    python experiments/study.py --data-root ./data --only fig3  # one group of runs
    python experiments/study.py --report-only                   # figures and tables only

Every run is `main.py` with flags, in --runs-dir/<name>/ (default log/study). A finished
run (its log says "Finished" and metrics.csv has the last epoch) is skipped; one with a
checkpoint is resumed from it, bit-identically; any other is started. Then the figures
and tables are built from the runs' own outputs (metrics.csv, test_features.pt) into
--runs-dir: fig3_lambda.png, fig5_sensitivity.png, fashion.png and tables.md. Runs that
are missing are named in tables.md, never filled in.

Groups (the schedule is SCHEDULE below, with the model's learning rate LR, or DIM_LR in
the dim group):
    fig3   MNIST, 2-D features, eq. 4 update with alpha 0.5, lambda 0 (softmax only),
           0.003, 0.01, 0.1, 1: the paper's Figure 3.
    dim    MNIST with 4 held-out classes, lambda 0 and 0.003, features of 2 and 128
           dimensions: which width to study the open set at. At 128-D the softmax-only
           run diverged at LR (NaN in epoch 1), so this group runs at DIM_LR. 128-D won
           on the unseen classes by more than 10 points: Figure 5 is studied at 128-D.
    fig5   MNIST with 4 held-out classes at FIG5_DIM (and FIG5_LR): lambda 0 ... 0.1 at
           alpha 0.5, and alpha 0.01 ... 1 at lambda 0.003 (the paper's Figure 5a and 5b).
    seed2  the deciding comparisons again with --seed 2: softmax only against BEST_2D
           (closed set, 2-D) and against BEST_OPEN (open set, FIG5_DIM).
    fashion
           Fashion-MNIST with those settings: closed set at 2-D and open set at FIG5_DIM,
           softmax only against center loss; FASHION_MAX_EPOCH epochs instead of MAX_EPOCH;
           seeds 1 and 2 (its epoch-to-epoch wobble is larger than MNIST's).
    omniglot, omniglot-longer, classes
           Omniglot at 128-D (OMNIGLOT_* below): the λ and α sweeps, λ 0.01 and 0.1 run
           longer, and K of its 964 training characters.
    lfw, lfw-view2, lfw-distance
           LFW by its protocol (LFW_* below): View 1's settings, View 2's ten folds, and
           View 1's best arm with one change at a time (depth, epochs, fewer people).
    lfw-recipe, lfw-levers, lfw-view2-recipe
           the face recipe's levers on View 1, one change at a time with softmax only
           beside each; then View 2 at the chosen recipe, two seeds (empty until chosen).
"""
import argparse
import math
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import utils  # noqa: E402

# One schedule for every run, chosen once: the authors' base rate (their MNIST example:
# lr 0.01, batch 128) with momentum 0.9 and weight decay 5e-4 as main.py, a tenfold decay
# after epoch 5, and an evaluation every epoch to check convergence (the last three test
# accuracies within 0.3 points). 8 epochs = 3,752 iterations of batch 128.
LR = 0.01
DIM_LR = 0.005  # 0.01 diverged with 128-D features; 0.005 trained (docs/mnist.md)
SCHEDULE = ["--stepsize", "5", "--gamma", "0.1", "--eval-freq", "1", "--batch-size", "128"]
MAX_EPOCH = 8
# The fashion group is a study of its own with a longer run of the same schedule: its
# closed-set λ = 1 run was still rising at 8 epochs (89.74, 90.10, 90.16%: spread 0.42 >
# 0.3) and at 10 (90.16, 90.45, 90.70%: 0.54); at 12 all four runs still spread 0.34-0.50
# (the last two epochs at the next tenfold decay), so every Fashion-MNIST run goes on to 15,
# the end of that third learning-rate stage.
FASHION_MAX_EPOCH = 15
CONVERGED_POINTS = 0.3
HOLDOUT = "6,7,8,9"  # four classes the open-set runs never train on

FIG3_LAMBDAS = [0, 0.003, 0.01, 0.1, 1]
FIG5_LAMBDAS = [0, 0.001, 0.003, 0.01, 0.03, 0.1]
FIG5_ALPHAS = [0.01, 0.1, 0.5, 1]
# The width of the open-set study, chosen from the dim group (docs/mnist.md): unseen
# classes at 2-D stay near chance (verification ~65%), at 128-D they are told apart.
FIG5_DIM = 128
FIG5_LR = DIM_LR  # the rate 128-D features train at
# The center-loss settings that the seed2 and fashion groups compare with softmax only
# (docs/mnist.md). BEST_2D: Figure 3's most accurate run, also the best by L2 distance.
# BEST_OPEN: the paper's λ for faces; at 128-D no λ beat softmax only on unseen classes
# (Figure 5a), and 0.003 is the paper's choice, with most of the seen-class gain.
BEST_2D = dict(lam=1, alpha=0.5)
BEST_OPEN = dict(lam=0.003, alpha=0.5)
FASHION = "fashion-mnist"

# Omniglot: 964 background characters to train on, 659 evaluation characters never seen
# (the paper's setting: many identities, tested on people never seen). LeNet++ at 128-D
# stays at chance (loss ln 964 = 6.87) for epochs with SGD at lr 0.01-0.05 and turns NaN
# at 0.1, while Adam trains (docs/omniglot.md, "A schedule that trains"): the model
# takes Adam at OMNIGLOT_LR, the centers their own SGD as everywhere else.
OMNIGLOT = "omniglot"
OMNIGLOT_CHARACTERS = 964
OMNIGLOT_DIM = 128
OMNIGLOT_LR = 0.001
OMNIGLOT_MAX_EPOCH, OMNIGLOT_STEPSIZE = 15, 10  # a tenfold decay after epoch 10
# λ 0.01 and 0.1 were still learning at epoch 15 (their last three seen accuracies spread 1.58
# and 1.95 points): the same schedule run on to OMNIGLOT_LONGER epochs (a second tenfold decay
# after epoch 20), as the group "omniglot-longer", shows where they settle.
OMNIGLOT_LONGER = 25
OMNIGLOT_LONGER_LAMBDAS = [0.01, 0.1]
OMNIGLOT_LAMBDAS = [0, 0.001, 0.003, 0.01, 0.03, 0.1]
OMNIGLOT_ALPHAS = [0.01, 0.1, 0.5, 1]
# The λ of the α sweep and of the class-count study: the λ sweep's best on unseen
# verification (log/study/tables.md, Omniglot Figure 5a): λ 0.001, 95.78% against 95.58% at
# 0.003 and 94.40% softmax only; also the best unseen MAP@R and TAR@FAR=1e-4 (seed 1).
OMNIGLOT_BEST_LAM = 0.001
CLASS_COUNTS = [10, 30, 100, 300, 964]

# LFW, the paper's own ground, by LFW's protocol (docs/lfw.md): resnet10 with 512-D features
# on 64 x 64 face crops. View 1 (peopleDevTrain -> pairsDevTest) chooses every setting; View
# 2's ten folds give the reported figure. One schedule: SGD at LFW_LR (momentum 0.9, weight
# decay 5e-4, batch 128), a tenfold decay every LFW_STEPSIZE epochs, LFW_MAX_EPOCH epochs,
# an evaluation every LFW_EVAL_FREQ (each costs a forward pass over the test set twice,
# with the mirror images).
LFW = "lfw"
LFW_LR, LFW_MAX_EPOCH, LFW_STEPSIZE, LFW_EVAL_FREQ = 0.1, 20, 8, 2
LFW_DIM = 512  # the paper's feature width
LFW_LAMBDAS = [0, 0.0003, 0.001, 0.003, 0.01, 0.03]
# People with one image: softmax classes or not (--lfw-min-images 1 or 2), measured on View 1
# with softmax only (seed 1): 2 (1,184 classes, 6,671 images) against 1 (4,038 classes, 9,525
# images) gave 82.70 against 81.60% LFW accuracy, AUC 0.9166 against 0.8992, MAP@R 21.10
# against 18.99%, in 30% less time. The rest of the study trains the people with 2+ images.
LFW_MIN_IMAGES = 2
# View 1's best λ (log/study/tables.md, seed 1): 0.003, the paper's, 85.40% LFW accuracy and
# AUC 0.9350, against 84.80% / 0.9242 at 0.001, 84.00% / 0.9294 at 0.01 and 82.70% / 0.9166
# softmax only.
LFW_BEST_LAM = 0.003
LFW_HEADS = ("softmax", "cosface")
# CosFace's learning rate. At LFW_LR it fits 39.94% of its training images in 20 epochs (View 1,
# s 64, m 0.35: 73.10%, AUC 0.8245); after 2 epochs it fits 1.29% at 0.1 against 14.54% at
# 0.01 (softmax only at 0.1: 8.47%). insightface's arcface_torch trains it at 0.1 for a batch
# of 1,024, a tenth of softmax's rate per image here (batch 128 at 0.1).
LFW_COSFACE_LR = 0.01
# What would close the distance to the published figures: View 1's best arm (λ LFW_BEST_LAM)
# with a quarter and a half of its 1,184 training people (drawn with the seed), whose slope
# says what more people would give; a deeper network; twice the epochs (the same schedule
# stretched: decays after 16 and 32). Cheapest first.
LFW_DISTANCE = [dict(people=296), dict(people=592), dict(model="resnet18"),
                dict(epochs=2 * LFW_MAX_EPOCH)]

# The recipe's levers (View 1 only), each a change from 40 epochs of the step schedule:
# its length (80), its shape (cosine), a narrower feature, a deeper network, the margin
# heads at their rate (ArcFace: s 64, m 0.5, as arcface_torch; CosFace: s 64, m 0.35).
LFW_RECIPE_EPOCHS = 2 * LFW_MAX_EPOCH
LFW_RECIPE = [dict(epochs=4 * LFW_MAX_EPOCH)]
# The threshold on LFW_THRESHOLD_PEOPLE training people held out of training (8% of View 1's
# 1,184 with two or more images; pairs of their first five images, 936 on View 1 with seed 1),
# against the protocol's pairs of trained people, whose scores sit above a test person's.
LFW_THRESHOLD_PEOPLE = 100
LFW_HEADS = [dict(schedule="cosine"), dict(head="arcface", lr=LFW_COSFACE_LR),
             dict(head="cosface", lr=LFW_COSFACE_LR)]
LFW_LEVERS = [dict(threshold_people=LFW_THRESHOLD_PEOPLE), dict(augment="strong"), dict(dim=128),
              dict(model="resnet18"), dict(input_size=96)]
# Center loss on the L2-normalised feature beside ArcFace, which compares directions only. λ
# for the same pull (experiments/center_scale.py on the 80-epoch λ 0.003 View 1 run): its
# training features' squared norm is 202 on average, the center term's gradient per unit λ
# 14.4 on the raw feature and 0.063 on the normalised one, so 0.003 x 228 = 0.685 ~ 0.7.
# One value, not a sweep.
LFW_NORMALISED_LAM = 0.7


# Small K: the ~1,800 steps of the 964-class runs are hundreds of epochs of 16 K images, long
# after the training loss is zero, where Adam at this rate is not stable (K = 30, 450 epochs:
# diverged between epochs 270 and 300), while 15 epochs are too few (K = 30: loss 0.30, unseen
# MAP@R 4.16% against 6.57% at epoch 30 of the long run; docs/omniglot.md, "How many training
# classes?"). So a K-class run takes the steps of the 964-class run, but at most
# OMNIGLOT_MAX_SCALE times its 15 epochs.
OMNIGLOT_MAX_SCALE = 4


def omniglot_scale(k):
    """Epochs of K classes per epoch of all 964: each class has 16 training images, so a
    K-class epoch is ceil(16 K / 128) steps; runs take about the same number of optimizer
    steps (and the same 15 evaluations) as with all 964, up to OMNIGLOT_MAX_SCALE x the epochs."""
    steps = lambda c: math.ceil(16 * c / 128)  # noqa: E731
    return max(1, min(OMNIGLOT_MAX_SCALE, round(steps(OMNIGLOT_CHARACTERS) / steps(k))))


def omniglot_run(lam, alpha=0.5, k=OMNIGLOT_CHARACTERS, seed=1, epochs=OMNIGLOT_MAX_EPOCH):
    return dict(dataset=OMNIGLOT, lam=lam, alpha=alpha, k=k, seed=seed, epochs=epochs)


def lfw_run(lam, head="softmax", split="view1", seed=1, min_images=None, lr=LFW_LR,
            model="resnet10", epochs=LFW_MAX_EPOCH, people=None, **levers):
    """An LFW run's settings; `levers` (the recipe's: schedule, dim, warmup) only where
    they differ from the study's schedule, so that older runs keep their names."""
    return dict(dataset=LFW, lam=lam, head=head, split=split, seed=seed,
                min_images=min_images or LFW_MIN_IMAGES, lr=lr, model=model, epochs=epochs,
                people=people, **levers)


# The recipe as chosen so far: `python main.py -d lfw` trains it (main.LFW_RECIPE; a test
# holds the two together). λ LFW_BEST_LAM at LFW_RECIPE_EPOCHS: 88.40% on View 1 against
# 85.40% at 20 epochs (log/study/tables.md).
LFW_RECIPE_RUN = lfw_run(LFW_BEST_LAM, epochs=LFW_RECIPE_EPOCHS)


def lfw_stepsize(epochs):
    """The LFW schedule stretched to `epochs`: the tenfold decays at the same fractions."""
    return LFW_STEPSIZE * epochs // LFW_MAX_EPOCH


def max_epoch(name):
    """The number of epochs of a run, from its name or dataset (names start with it)."""
    if name.startswith(LFW):
        epochs = re.search(r"-(\d+)epochs", name)
        return int(epochs.group(1)) if epochs else LFW_MAX_EPOCH
    if name.startswith(OMNIGLOT):
        k, epochs = re.search(r"-k(\d+)", name), re.search(r"-(\d+)epochs", name)
        return ((int(epochs.group(1)) if epochs else OMNIGLOT_MAX_EPOCH)
                * omniglot_scale(int(k.group(1)) if k else OMNIGLOT_CHARACTERS))
    return FASHION_MAX_EPOCH if name.startswith(FASHION) else MAX_EPOCH


def fig5_run(**settings):
    """Settings of an open-set run of Figure 5's width and learning rate."""
    return dict(open_set=True, dim=FIG5_DIM, lr=FIG5_LR, **settings)


def fashion_runs(seed=1):
    """Fashion-MNIST: closed set (softmax only, BEST_2D), then open set (softmax only,
    BEST_OPEN)."""
    return [dict(dataset=FASHION, lam=0, seed=seed), dict(dataset=FASHION, seed=seed, **BEST_2D),
            fig5_run(dataset=FASHION, lam=0, seed=seed),
            fig5_run(dataset=FASHION, seed=seed, **BEST_OPEN)]


def run_name(dataset="mnist", open_set=False, dim=2, lam=0.003, alpha=0.5, seed=1, lr=LR,
             k=None, head="softmax", split="view1", min_images=1, epochs=None,
             model="resnet10", people=None, schedule="step", warmup=0, threshold_people=0,
             center_feature="raw", augment="crop-flip", input_size=64):
    if dataset == LFW:
        name = f"{LFW}-{split}" + (f"-{head}" if head != "softmax" else "")
        name += f"-lam{lam:g}" + (f"-alpha{alpha:g}" if lam else "")
        name += f"-min{min_images}" if min_images != 1 else ""
        name += f"-lr{lr:g}" if lr != LFW_LR else ""
        name += f"-{model}" if model != "resnet10" else ""
        name += f"-{epochs}epochs" if (epochs or LFW_MAX_EPOCH) != LFW_MAX_EPOCH else ""
        name += f"-people{people}" if people else ""
        name += f"-{schedule}" if schedule != "step" else ""
        name += f"-d{dim}" if dim not in (2, LFW_DIM) else ""  # 2: run_name's own default
        name += f"-warmup{warmup}" if warmup else ""
        name += f"-thr{threshold_people}" if threshold_people else ""
        name += "-normalised" if center_feature != "raw" else ""
        name += f"-{augment}aug" if augment != "crop-flip" else ""
        name += f"-in{input_size}" if input_size != 64 else ""
        return name + (f"-seed{seed}" if seed != 1 else "")
    epochs = OMNIGLOT_MAX_EPOCH if epochs is None else epochs
    if dataset == OMNIGLOT:
        name = f"{OMNIGLOT}-d{OMNIGLOT_DIM}" + (f"-k{k}" if k != OMNIGLOT_CHARACTERS else "")
        name += f"-lam{lam:g}" + (f"-alpha{alpha:g}" if lam else "")
        name += f"-{epochs}epochs" if epochs != OMNIGLOT_MAX_EPOCH else ""
        return name + (f"-seed{seed}" if seed != 1 else "")
    name = f"{dataset}{'-open' if open_set else ''}-d{dim}-lam{lam:g}"
    name += f"-alpha{alpha:g}" if lam else ""  # alpha moves centers nothing then trains on
    name += f"-lr{lr:g}" if lr != LR else ""
    return name + (f"-seed{seed}" if seed != 1 else "")


def run_flags(dataset="mnist", open_set=False, dim=2, lam=0.003, alpha=0.5, seed=1, lr=LR,
              k=None, head="softmax", split="view1", min_images=1, epochs=None,
              model="resnet10", people=None, schedule="step", warmup=0, threshold_people=0,
              center_feature="raw", augment="crop-flip", input_size=64):
    if dataset == LFW:
        epochs = epochs or LFW_MAX_EPOCH
        dim = LFW_DIM if dim == 2 else dim
        levers = (["--lr-schedule", schedule] if schedule != "step" else []) + (
            ["--weight-cent-warmup", str(warmup)] if warmup else []) + (
            ["--lfw-threshold-people", str(threshold_people)] if threshold_people else []) + (
            ["--center-feature", center_feature] if center_feature != "raw" else []) + (
            ["--augment", augment] if augment != "crop-flip" else []) + (
            ["--input-size", str(input_size)] if input_size != 64 else [])
        return ["-d", LFW, "--lfw-split", split, "--lfw-min-images", str(min_images),
                "--model", model, "--feat-dim", str(dim), "--head", head,
                "--center-update", "paper", "--lr-cent", f"{alpha:g}", "--weight-cent",
                f"{lam:g}", "--seed", str(seed), "--lr-model", f"{lr:g}",
                "--batch-size", "128", "--gamma", "0.1",
                "--stepsize", str(lfw_stepsize(epochs)),
                "--eval-freq", str(LFW_EVAL_FREQ), "--max-epoch", str(epochs)
                ] + (["--train-classes", str(people)] if people else []) + levers
    epochs = OMNIGLOT_MAX_EPOCH if epochs is None else epochs
    if dataset == OMNIGLOT:
        scale = omniglot_scale(k)
        return ["-d", OMNIGLOT, "--feat-dim", str(OMNIGLOT_DIM), "--center-update", "paper",
                "--lr-cent", f"{alpha:g}", "--weight-cent", f"{lam:g}", "--seed", str(seed),
                "--optimizer", "adam", "--lr-model", f"{OMNIGLOT_LR:g}", "--batch-size", "128",
                "--gamma", "0.1", "--stepsize", str(OMNIGLOT_STEPSIZE * scale),
                "--eval-freq", str(scale), "--max-epoch", str(epochs * scale)
                ] + (["--train-classes", str(k)] if k != OMNIGLOT_CHARACTERS else [])
    flags = ["-d", dataset, "--feat-dim", str(dim), "--center-update", "paper",
             "--lr-cent", f"{alpha:g}", "--weight-cent", f"{lam:g}", "--seed", str(seed),
             "--lr-model", f"{lr:g}"]
    return (flags + (["--holdout-classes", HOLDOUT] if open_set else []) + SCHEDULE
            + ["--max-epoch", str(max_epoch(dataset))])


def groups():
    """{group: [settings dict of each run]}, in the order they run."""
    return {
        "fig3": [dict(lam=lam) for lam in FIG3_LAMBDAS],
        "dim": [dict(open_set=True, dim=dim, lam=lam, lr=DIM_LR) for dim in (2, 128)
                for lam in (0, 0.003)],
        "fig5": ([fig5_run(lam=lam) for lam in FIG5_LAMBDAS]
                 + [fig5_run(lam=0.003, alpha=a) for a in FIG5_ALPHAS if a != 0.5]),
        "seed2": [dict(lam=0, seed=2), dict(BEST_2D, seed=2),
                  fig5_run(lam=0, seed=2), fig5_run(seed=2, **BEST_OPEN)],
        "fashion": fashion_runs(seed=1) + fashion_runs(seed=2),
        "omniglot": omniglot_fig5_runs(),
        "omniglot-longer": [omniglot_run(lam, epochs=OMNIGLOT_LONGER)
                            for lam in OMNIGLOT_LONGER_LAMBDAS],
        "classes": omniglot_class_runs(),
        "lfw": lfw_view1_runs(),
        "lfw-view2": lfw_view2_runs(),
        "lfw-view2-recipe": lfw_view2_recipe_runs(),
        # and softmax only at the longer schedule: does center loss's lead survive it?
        "lfw-distance": ([lfw_run(LFW_BEST_LAM, **change) for change in LFW_DISTANCE]
                         + [lfw_run(0, epochs=2 * LFW_MAX_EPOCH)]),
        # The recipe, chosen on View 1: from λ LFW_BEST_LAM at 40 epochs, one change at a
        # time, each with softmax only beside it.
        "lfw-recipe": [lfw_run(lam, **change) for change in LFW_RECIPE
                       for lam in (0, LFW_BEST_LAM)],
        "lfw-levers": ([lfw_run(lam, epochs=LFW_RECIPE_EPOCHS, **change)
                        for change in LFW_HEADS for lam in (0, LFW_BEST_LAM)]
                       + [lfw_run(LFW_NORMALISED_LAM, epochs=LFW_RECIPE_EPOCHS, head="arcface",
                                  lr=LFW_COSFACE_LR, center_feature="normalised")]
                       + [lfw_run(lam, epochs=LFW_RECIPE_EPOCHS, **change)
                          for change in LFW_LEVERS for lam in (0, LFW_BEST_LAM)]
                       + [lfw_run(LFW_BEST_LAM, epochs=LFW_RECIPE_EPOCHS, warmup=5)]),
    }


def lfw_arms():
    """View 2's arms, (label, settings of a fold's run): softmax only and View 1's best
    center loss, CosFace alone and with it; empty until LFW_BEST_LAM is chosen."""
    if LFW_BEST_LAM is None:
        return []
    return [("softmax only", dict(lam=0)),
            (f"λ {LFW_BEST_LAM:g}", dict(lam=LFW_BEST_LAM)),
            ("CosFace", dict(lam=0, head="cosface", lr=LFW_COSFACE_LR)),
            (f"CosFace + λ {LFW_BEST_LAM:g}",
             dict(lam=LFW_BEST_LAM, head="cosface", lr=LFW_COSFACE_LR))]


def lfw_view2_runs():
    """Softmax only and center loss on all ten folds first, fold by fold (a fold's two arms
    side by side, as --part 1/2 and 2/2 share them out), then the CosFace arms likewise."""
    arms = [arm for _, arm in lfw_arms()]
    return [lfw_run(split=f"fold{k}", **arm) for pair in (arms[:2], arms[2:])
            for k in range(1, 11) for arm in pair]


# View 2 at the recipe chosen on View 1 (LFW_RECIPE_RUN), all ten folds, two seeds: the
# recipe without center loss (the softmax-family baseline) and with it. Empty until View 1
# has chosen (LFW_RECIPE_CHOSEN); View 2 chooses nothing.
LFW_RECIPE_CHOSEN = False
LFW_VIEW2_SEEDS = (1, 2)


def lfw_recipe_arms():
    """(label, settings) of View 2's arms at the recipe, the baseline first."""
    if not LFW_RECIPE_CHOSEN:
        return []
    recipe = {k: v for k, v in LFW_RECIPE_RUN.items() if k not in ("dataset", "split", "seed")}
    return [("recipe, softmax-family only", dict(recipe, lam=0)),
            (f"recipe + λ {recipe['lam']:g}", recipe)]


def lfw_view2_recipe_runs():
    """Seed by seed, fold by fold, a fold's arms side by side (as --part K/N shares them)."""
    return [lfw_run(split=f"fold{k}", seed=seed, **arm) for seed in LFW_VIEW2_SEEDS
            for k in range(1, 11) for _, arm in lfw_recipe_arms()]


def lfw_view1_runs():
    """View 1: softmax only with and without the one-image people as classes, the λ sweep
    at α 0.5, CosFace alone and, once LFW_BEST_LAM is chosen, with it: at softmax's rate,
    then at LFW_COSFACE_LR (two runs more, so that --part 1/2 and 2/2 keep View 2's folds)."""
    runs = [lfw_run(0, min_images=1), lfw_run(0, min_images=2)]
    runs += [lfw_run(lam) for lam in LFW_LAMBDAS if lam]
    if LFW_BEST_LAM is not None:
        runs += [lfw_run(lam, head="cosface", lr=lr) for lr in (LFW_LR, LFW_COSFACE_LR)
                 for lam in (0, LFW_BEST_LAM)]
    else:
        runs += [lfw_run(0, head="cosface")]
    return runs


def omniglot_fig5_runs():
    """Figure 5 on Omniglot: λ at α 0.5, then α at OMNIGLOT_BEST_LAM once chosen."""
    runs = [omniglot_run(lam) for lam in OMNIGLOT_LAMBDAS]
    if OMNIGLOT_BEST_LAM is not None:
        runs += [omniglot_run(OMNIGLOT_BEST_LAM, a) for a in OMNIGLOT_ALPHAS if a != 0.5]
    return runs


def omniglot_class_runs():
    """K training characters x {softmax only, OMNIGLOT_BEST_LAM} x seeds 1 and 2 (the
    seed also draws the K characters); empty until OMNIGLOT_BEST_LAM is chosen."""
    if OMNIGLOT_BEST_LAM is None:
        return []
    return [omniglot_run(lam, k=k, seed=seed) for seed in (1, 2) for k in CLASS_COUNTS
            for lam in (0, OMNIGLOT_BEST_LAM)]


# ----------------------------------------------------------------------------- runs

def read_rows(run_dir):
    path = os.path.join(run_dir, "metrics.csv")
    return utils.read_metrics(path) if os.path.exists(path) else []


def finished(run_dir, epochs=None):
    """Whether the run has its last epoch (`epochs`, else read off its name) in metrics.csv
    and its log says "Finished"."""
    rows = read_rows(run_dir)
    run = os.path.basename(os.path.normpath(run_dir))
    if not rows or int(rows[-1]["epoch"]) != (epochs or max_epoch(run)):
        return False
    for name in os.listdir(run_dir):
        if name.startswith("log_"):
            with open(os.path.join(run_dir, name)) as f:
                if "Finished." in f.read():
                    return True
    return False


def train(name, flags, args, passthrough, epochs=None):
    """Run main.py for one configuration: skip, resume or start it."""
    run_dir = os.path.join(args.runs_dir, name)
    if finished(run_dir, epochs):
        print(f"{name}: finished, skipped")
        return
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--data-root", args.data_root,
               "--save-dir", run_dir, *flags, *passthrough]
    checkpoint = os.path.join(run_dir, "checkpoint.pth.tar")
    if os.path.exists(checkpoint):
        command += ["--resume", checkpoint]
    print(f"{name}: {'resuming' if '--resume' in command else 'training'}, log in {run_dir}",
          flush=True)
    start = time.time()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        returncode = child.wait()
    except KeyboardInterrupt:  # Ctrl-C reached main.py too: it saves nothing more, exits 130
        child.wait()
        print(f"{name}: interrupted; its last checkpoint stays in {run_dir}, and the same "
              f"command resumes it", file=sys.stderr)
        sys.exit(130)
    if returncode:
        sys.exit(f"{name}: main.py exited with {returncode}; see its log in {run_dir}")
    print(f"{name}: done in {time.time() - start:.0f} s", flush=True)


# ----------------------------------------------------------------------- reporting

def last(name, args):
    """The run's last metrics.csv row with the spread of its last three accuracies, or
    None when it has not finished."""
    if not finished(os.path.join(args.runs_dir, name)):
        return None
    rows = read_rows(os.path.join(args.runs_dir, name))
    row = dict(rows[-1])
    accs = [float(r["accuracy"]) for r in rows[-3:]]
    row["spread"] = max(accs) - min(accs)  # convergence: the last three evaluations
    return row


def cell(row, key, digits=2):
    return "—" if row is None or row.get(key, "") == "" else f"{float(row[key]):.{digits}f}"


# What the cells of a run that has not finished hold. A table none of whose runs finished is
# left out: a runs folder's tables.md shows the groups that ran there, and only those.
MISSING = ("—", "not finished", "0/10")


def table(title, header, lines):
    if all(cell in MISSING for line in lines for cell in line[1:]):
        return []
    out = [f"### {title}", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(line) + " |" for line in lines] + [""]


def converged(row):
    if row is None:
        return "not finished"
    return f"{row['spread']:.2f}" + ("" if row["spread"] <= CONVERGED_POINTS else " (NOT converged)")


CLOSED_HEADER = ["accuracy %", "P@1 %", "MAP@R %", "verification acc. %", "TAR@FAR=1e-3 %",
                 "AUC", "spread of last 3 acc."]
OPEN_HEADER = ["seen accuracy %", "seen verification %", "seen MAP@R %",
               "unseen verification %", "unseen MAP@R %", "unseen P@1 %",
               "unseen TAR@FAR=1e-3 %", "spread of last 3 acc."]
EUCLIDEAN_HEADER = ["P@1 % (L2)", "MAP@R % (L2)", "verification acc. % (L2)",
                    "TAR@FAR=1e-3 % (L2)"]


def closed_set_lines(settings, args, label):
    lines = []
    for s in settings:
        row = last(run_name(**s), args)
        lines.append([label(s), cell(row, "accuracy"), cell(row, "precision_at_1"),
                      cell(row, "map_at_r"), cell(row, "ver_accuracy"), cell(row, "tar_at_far"),
                      cell(row, "auc", 4), converged(row)])
    return lines


def open_set_lines(settings, args, label):
    lines = []
    for s in settings:
        row = last(run_name(**s), args)
        lines.append([label(s), cell(row, "accuracy"), cell(row, "ver_accuracy"),
                      cell(row, "map_at_r"), cell(row, "unseen_ver_accuracy"),
                      cell(row, "unseen_map_at_r"), cell(row, "unseen_precision_at_1"),
                      cell(row, "unseen_tar_at_far"), converged(row)])
    return lines


def describe(s):
    """'softmax only' or 'λ 0.003, α 0.5', and the seed when it is not 1."""
    text = f"λ {s['lam']:g}, α {s.get('alpha', 0.5):g}" if s["lam"] else "softmax only"
    return text + (f", seed {s['seed']}" if s.get("seed", 1) != 1 else "")


def fig3_tables(args):
    runs = [dict(lam=lam) for lam in FIG3_LAMBDAS]
    label = lambda s: f"{s['lam']:g}" + (" (softmax only)" * (not s["lam"]))  # noqa: E731
    return (table("Figure 3: MNIST, 2-D features, alpha 0.5 (test set, cosine)",
                  ["λ"] + CLOSED_HEADER, closed_set_lines(runs, args, label))
            + table("Figure 3 by L2 distance: the same runs' final test features",
                    ["λ"] + EUCLIDEAN_HEADER, euclidean_lines(runs, args, label)))


def euclidean_lines(settings, args, label):
    """Retrieval and verification of a 2-D run's saved test features by L2 distance, with
    main.py's pairs: cosine sees only a feature's angle, center loss shapes its length too."""
    import torch
    import evaluation
    lines = []
    for s in settings:
        path = os.path.join(args.runs_dir, run_name(**s), "test_features.pt")
        if not os.path.exists(path):
            lines.append([label(s)] + ["—"] * 4)
            continue
        saved = torch.load(path, weights_only=True)
        x, y = saved["features"], saved["labels"]
        r = evaluation.retrieval_metrics(x, y, metric="euclidean")
        pairs = evaluation.verification_pairs(y, evaluation.NUM_PAIRS, seed=evaluation.PAIRS_SEED)
        v = evaluation.verification_metrics(x, y, pairs, metric="euclidean")
        lines.append([label(s)] + [f"{100 * value:.2f}" for value in
                                   (r["precision_at_1"], r["map_at_r"], v["accuracy"],
                                    v["tar_at_far"])])
    return lines


def open_set_tables(args):
    where = f"MNIST, {FIG5_DIM}-D, --lr-model {FIG5_LR:g}, classes {HOLDOUT} held out"
    out = table(f"Feature width, open set: MNIST, classes {HOLDOUT} held out, alpha 0.5, "
                f"--lr-model {DIM_LR:g}",
                ["D, λ"] + OPEN_HEADER,
                open_set_lines(groups()["dim"], args, lambda s: f"{s['dim']}, {s['lam']:g}"))
    lam = [fig5_run(lam=v) for v in FIG5_LAMBDAS]
    out += table(f"Figure 5a: λ at alpha 0.5 ({where})",
                 ["λ"] + OPEN_HEADER, open_set_lines(lam, args, lambda s: f"{s['lam']:g}"))
    alpha = [fig5_run(lam=0.003, alpha=a) for a in FIG5_ALPHAS]
    out += table(f"Figure 5b: alpha at λ 0.003 ({where})",
                 ["α"] + OPEN_HEADER, open_set_lines(alpha, args, lambda s: f"{s['alpha']:g}"))
    return out


def seed_and_fashion_tables(args):
    """The deciding comparisons at seeds 1 and 2, and Fashion-MNIST."""
    closed = [dict(s, seed=seed) for s in (dict(lam=0), BEST_2D) for seed in (1, 2)]
    opened = [fig5_run(**dict(s, seed=seed)) for s in (dict(lam=0), BEST_OPEN) for seed in (1, 2)]
    out = table("Second seed, closed set: MNIST, 2-D", ["run"] + CLOSED_HEADER,
                closed_set_lines(closed, args, describe))
    out += table("Second seed, closed set by L2 distance", ["run"] + EUCLIDEAN_HEADER,
                 euclidean_lines(closed, args, describe))
    out += table(f"Second seed, open set: MNIST, {FIG5_DIM}-D, --lr-model {FIG5_LR:g}, classes "
                 f"{HOLDOUT} held out", ["run"] + OPEN_HEADER,
                 open_set_lines(opened, args, describe))
    fashion = fashion_runs()  # each run beside its second seed, as in the tables above
    fashion_closed = [dict(s, seed=seed) for s in fashion[:2] for seed in (1, 2)]
    fashion_open = [dict(s, seed=seed) for s in fashion[2:] for seed in (1, 2)]
    out += table(f"Fashion-MNIST, closed set: 2-D, {FASHION_MAX_EPOCH} epochs (test set, cosine)",
                 ["run"] + CLOSED_HEADER, closed_set_lines(fashion_closed, args, describe))
    out += table("Fashion-MNIST, closed set by L2 distance", ["run"] + EUCLIDEAN_HEADER,
                 euclidean_lines(fashion_closed, args, describe))
    out += table(f"Fashion-MNIST, open set: {FIG5_DIM}-D, --lr-model {FIG5_LR:g}, "
                 f"{FASHION_MAX_EPOCH} epochs, classes "
                 f"{HOLDOUT} held out", ["run"] + OPEN_HEADER,
                 open_set_lines(fashion_open, args, describe))
    return out


OMNIGLOT_HEADER = ["seen accuracy %", "seen verification %", "unseen verification %",
                   "unseen MAP@R %", "unseen TAR@FAR=1e-4 % (all pairs)",
                   "one-shot error % (cosine)", "one-shot error % (L2)", "spread of last 3 acc."]
# (metrics.csv column, axis label, lower is better) of the Omniglot figures
OMNIGLOT_PANELS = [("unseen_ver_accuracy", "unseen verification accuracy %", False),
                   ("unseen_map_at_r", "unseen MAP@R %", False),
                   ("unseen_tar_all_1e-04", "unseen TAR@FAR=1e-4 % (all pairs)", False),
                   ("oneshot_error", "one-shot error % (cosine)", True)]


def omniglot_lines(settings, args, label):
    lines = []
    for s in settings:
        row = last(run_name(**s), args)
        lines.append([label(s)] + [cell(row, key) for key in (
            "accuracy", "ver_accuracy", "unseen_ver_accuracy", "unseen_map_at_r",
            "unseen_tar_all_1e-04", "oneshot_error", "oneshot_error_l2")] + [converged(row)])
    return lines


def omniglot_tables(args):
    where = (f"Omniglot, {OMNIGLOT_DIM}-D, Adam lr {OMNIGLOT_LR:g}, 964 training characters, "
             f"659 unseen")
    longer = [omniglot_run(v, epochs=OMNIGLOT_LONGER) for v in OMNIGLOT_LONGER_LAMBDAS]
    out = table(f"Omniglot Figure 5a: λ at alpha 0.5 ({where}; {OMNIGLOT_MAX_EPOCH} epochs "
                f"unless the row says)", ["λ"] + OMNIGLOT_HEADER,
                omniglot_lines([omniglot_run(v) for v in OMNIGLOT_LAMBDAS] + longer, args,
                               lambda s: f"{s['lam']:g}" + (
                                   f", {s['epochs']} epochs"
                                   if s["epochs"] != OMNIGLOT_MAX_EPOCH else "")))
    if OMNIGLOT_BEST_LAM is None:
        return out + ["Figure 5b and the class-count study wait for the λ sweep's choice "
                      "(OMNIGLOT_BEST_LAM).", ""]
    out += table(f"Omniglot Figure 5b: alpha at λ {OMNIGLOT_BEST_LAM:g} ({where})",
                 ["α"] + OMNIGLOT_HEADER,
                 omniglot_lines([omniglot_run(OMNIGLOT_BEST_LAM, a) for a in OMNIGLOT_ALPHAS],
                                args, lambda s: f"{s['alpha']:g}"))
    out += table("How many training classes? K background characters (drawn by the seed), "
                 "the same 659 unseen", ["K, run"] + OMNIGLOT_HEADER,
                 omniglot_lines(omniglot_class_runs(), args,
                                lambda s: f"{s['k']}, {describe(s)}"))
    return out


LFW_HEADER = ["LFW accuracy %", "AUC", "TAR@FAR=1e-3 %", "all pairs: TAR@FAR=1e-3 %",
              "TAR@FAR=1e-4 %", "MAP@R %", "threshold", "trained people's images: acc. %",
              "spread of last 3 AUC (points)"]


def lfw_last(name, args):
    """last() for an LFW run, whose convergence is read off the test pairs' AUC (in points:
    x 100). The only class-labelled test images are training images, and the accuracy of
    1,000 pairs through a threshold chosen on other pairs moves by 0.5-0.7 points between
    evaluations of a run whose AUC stays within 0.03 (one pair is 0.1 point)."""
    row = last(name, args)
    if row is not None:
        aucs = [100 * float(r["unseen_auc"])
                for r in read_rows(os.path.join(args.runs_dir, name))[-3:]]
        row["spread"] = max(aucs) - min(aucs)
    return row


def lfw_lines(settings, args, label):
    lines = []
    for s in settings:
        row = lfw_last(run_name(**s), args)
        lines.append([label(s), cell(row, "unseen_ver_accuracy"), cell(row, "unseen_auc", 4),
                      cell(row, "unseen_tar_at_far"), cell(row, "unseen_tar_all_1e-03"),
                      cell(row, "unseen_tar_all_1e-04"), cell(row, "unseen_map_at_r"),
                      cell(row, "lfw_threshold", 3), cell(row, "accuracy"), converged(row)])
    return lines


def lfw_describe(s):
    text = "CosFace" if s["head"] == "cosface" else "softmax"
    text += f" + λ {s['lam']:g}, α 0.5" if s["lam"] else " only"
    if s["lr"] != LFW_LR:
        text += f", lr {s['lr']:g}"
    if s["min_images"] != LFW_MIN_IMAGES:
        text += f", people with {s['min_images']}+ images as classes"
    return text + (f", seed {s['seed']}" if s["seed"] != 1 else "")


def lfw_distance_describe(s):
    if not s["lam"]:
        return f"softmax only, {s['epochs']} epochs"
    if s["model"] != "resnet10":
        return f"{s['model']} (twice the blocks)"
    if s["epochs"] != LFW_MAX_EPOCH:
        step = lfw_stepsize(s["epochs"])
        return f"{s['epochs']} epochs (decays after {step} and {2 * step})"
    if s["people"]:
        return f"{s['people']:,} of the 1,184 training people"
    return "as View 1: resnet10, 20 epochs, 1,184 people"


def lfw_recipe_runs():
    """The recipe table's runs: the 40-epoch pair it starts from, then each lever's."""
    base = [lfw_run(lam, epochs=LFW_RECIPE_EPOCHS) for lam in (0, LFW_BEST_LAM)]
    return base + groups()["lfw-recipe"] + groups()["lfw-levers"]


def lfw_recipe_describe(s):
    """What a recipe run changes from the 40-epoch step schedule, and its arm."""
    change = []
    if s["epochs"] != LFW_RECIPE_EPOCHS:
        change.append(f"{s['epochs']} epochs (decays after {lfw_stepsize(s['epochs'])} and "
                      f"{2 * lfw_stepsize(s['epochs'])})")
    if s.get("schedule", "step") != "step":
        change.append(f"{s['schedule']} schedule")
    if s["head"] != "softmax":
        change.append({"cosface": "CosFace", "arcface": "ArcFace"}[s["head"]]
                      + f", lr {s['lr']:g}")
    if s.get("dim", LFW_DIM) != LFW_DIM:
        change.append(f"{s['dim']}-D")
    if s["model"] != "resnet10":
        change.append(s["model"])
    if s.get("warmup"):
        change.append(f"λ warmed up over {s['warmup']} epochs")
    if s.get("threshold_people"):
        change.append(f"threshold on {s['threshold_people']} held-out people")
    if s.get("center_feature", "raw") != "raw":
        change.append("center loss on the normalised feature")
    if s.get("augment", "crop-flip") != "crop-flip":
        change.append("strong augmentation (resized crop, colour jitter, erasing)")
    if s.get("input_size", 64) != 64:
        change.append(f"{s['input_size']} x {s['input_size']} input")
    arm = f"λ {s['lam']:g}" if s["lam"] else "softmax only"
    return f"{', '.join(change) or 'as it starts'}: {arm}"


def lfw_recipe_lines(args):
    """lfw_lines of the recipe runs, with the oracle threshold's accuracy from each run's
    pair_scores.json.gz (older runs have none: —)."""
    import evaluation
    runs = lfw_recipe_runs()
    lines = lfw_lines(runs, args, lfw_recipe_describe)
    for s, line in zip(runs, lines):
        path = os.path.join(args.runs_dir, run_name(**s), "pair_scores.json.gz")
        if os.path.exists(path) and line[-1] != "not finished":
            record = utils.load_pair_scores(path)
            line.append(f"{evaluation.pair_scores_figures(record)['best_accuracy']:.2f}")
        else:
            line.append("—")
    return lines


def lfw_fold_rows(arm, args):
    """The last metrics row of each of one arm's ten folds, None where not finished."""
    return [lfw_last(run_name(**lfw_run(split=f"fold{k}", **arm)), args) for k in range(1, 11)]


def lfw_accuracies(rows):
    """The test-pair accuracies (%) of lfw_fold_rows' rows, None where not finished."""
    return [None if row is None else float(row["unseen_ver_accuracy"]) for row in rows]


def lfw_fold_means(rows):
    """Mean AUC and MAP@R (%) of an arm's test people over the ten folds: "—" each until all
    ten have finished."""
    if any(row is None for row in rows):
        return ["—", "—"]
    return [f"{sum(float(r['unseen_auc']) for r in rows) / 10:.4f}",
            f"{sum(float(r['unseen_map_at_r']) for r in rows) / 10:.2f}"]


def lfw_tables(args):
    where = (f"resnet10, 512-D, 64 x 64 crops, SGD lr {LFW_LR:g} unless the row says, "
             f"{LFW_MAX_EPOCH} epochs; "
             f"threshold chosen on the trained people's pairs; the test people's figures")
    out = table(f"LFW View 1 ({where})", ["run"] + LFW_HEADER,
                lfw_lines(lfw_view1_runs(), args, lfw_describe))
    arms = lfw_arms()
    if not arms:
        return out + ["View 2 waits for View 1's choice of λ (LFW_BEST_LAM).", ""]
    out += table(f"LFW View 1, λ {LFW_BEST_LAM:g}: one change at a time (what would close "
                 f"the distance to the published figures)", ["change"] + LFW_HEADER,
                 lfw_lines([lfw_run(LFW_BEST_LAM)] + groups()["lfw-distance"], args,
                           lfw_distance_describe))
    step = lfw_stepsize(LFW_RECIPE_EPOCHS)
    out += table(f"LFW View 1, the recipe: one change at a time from λ {LFW_BEST_LAM:g} at "
                 f"{LFW_RECIPE_EPOCHS} epochs (decays after {step} and {2 * step}), softmax "
                 f"only beside each; oracle: the accuracy of the best threshold read off the "
                 f"test pairs themselves, which the protocol does not allow",
                 ["change, arm"] + LFW_HEADER + ["oracle threshold acc. %"],
                 lfw_recipe_lines(args))
    import evaluation
    rows = {label: lfw_fold_rows(arm, args) for label, arm in arms}
    folds = {label: lfw_accuracies(r) for label, r in rows.items()}
    # Each arm against the arm it adds one thing to: center loss against its loss without it,
    # CosFace against softmax; same fold, same seed, so the fold's difficulty cancels.
    bases = {arms[1][0]: arms[0][0], arms[2][0]: arms[0][0], arms[3][0]: arms[2][0]}
    lines = []
    for label, accs in folds.items():
        done = [a for a in accs if a is not None]
        mean = "—" if len(done) < 10 else "{:.2f} ± {:.2f}".format(*evaluation.standard_error(done))
        diff, count = "—", "—"
        if label in bases:
            diff, count = paired_cells(accs, folds[bases[label]])
            diff += f" to {bases[label]}" if diff != "—" else ""
        lines.append([label, mean, diff, count, f"{len(done)}/10"]
                     + lfw_fold_means(rows[label])
                     + ["—" if a is None else f"{a:.2f}" for a in accs])
    out += lfw_view2_recipe_table(args)
    return out + table("LFW View 2: mean ± standard error over the 10 folds, and each fold "
                       "(test pairs' accuracy %)",
                       ["arm", "mean ± SE", "paired difference (same fold and seed)",
                        "folds ahead / level / behind", "folds done", "mean AUC",
                        "mean MAP@R % (test people)"]
                       + [f"fold {k}" for k in range(1, 11)], lines)


def paired_cells(accs, base_accs):
    """An arm against its baseline fold by fold (None: not finished): the mean paired
    difference ± its SE once all ten folds are in, and the folds ahead / level / behind."""
    import evaluation
    paired = [a - b for a, b in zip(accs, base_accs) if a is not None and b is not None]
    diff = ("{:+.2f} ± {:.2f}".format(*evaluation.standard_error(paired))
            if len(paired) == 10 else "—")
    count = ("{} / {} / {}".format(sum(d > 0 for d in paired), sum(d == 0 for d in paired),
                                   sum(d < 0 for d in paired)) if paired else "—")
    return diff, count


def lfw_seed_means(arm, args):
    """Per fold, the mean over LFW_VIEW2_SEEDS of a figure of an arm's runs: {key: [ten
    values, None where a seed's run has not finished]}, and how many runs finished."""
    keys = ("unseen_ver_accuracy", "unseen_auc", "unseen_tar_all_1e-03", "unseen_map_at_r")
    out, done = {key: [] for key in keys}, 0
    for k in range(1, 11):
        rows = [lfw_last(run_name(**lfw_run(split=f"fold{k}", seed=seed, **arm)), args)
                for seed in LFW_VIEW2_SEEDS]
        done += sum(row is not None for row in rows)
        for key in keys:
            out[key].append(None if any(r is None for r in rows) else
                            sum(float(r[key]) for r in rows) / len(rows))
    return out, done


def lfw_view2_recipe_table(args):
    """View 2 at the recipe: each arm's mean ± SE over the folds (seed-averaged per fold),
    the paired difference to the baseline fold by fold, and the threshold-free figures."""
    import evaluation
    arms = lfw_recipe_arms()
    means = {label: lfw_seed_means(arm, args) for label, arm in arms}
    base = arms[0][0] if arms else None
    lines = []
    for label, (figures, done) in means.items():
        accs = figures["unseen_ver_accuracy"]
        complete = all(a is not None for a in accs)
        mean = "{:.2f} ± {:.2f}".format(*evaluation.standard_error(accs)) if complete else "—"
        diff, count = "—", "—"
        if label != base:
            diff, count = paired_cells(accs, means[base][0]["unseen_ver_accuracy"])
        mean_of = lambda key, fmt: (fmt.format(sum(figures[key]) / 10) if complete  # noqa: E731
                                    else "—")
        lines.append([label, mean, diff, count, f"{done}/{10 * len(LFW_VIEW2_SEEDS)}",
                      mean_of("unseen_auc", "{:.4f}"), mean_of("unseen_tar_all_1e-03", "{:.2f}"),
                      mean_of("unseen_map_at_r", "{:.2f}")]
                     + ["—" if a is None else f"{a:.2f}" for a in accs])
    seeds = " and ".join(map(str, LFW_VIEW2_SEEDS))
    return table(f"LFW View 2 at the recipe: mean ± standard error over the 10 folds of each "
                 f"fold's accuracy averaged over seeds {seeds}; the paired difference to "
                 f"{base} (same fold, seed-averaged)",
                 ["arm", "mean ± SE", "paired difference", "folds ahead / level / behind",
                  "runs done", "mean AUC", "mean all-pairs TAR@FAR=1e-3 %",
                  "mean MAP@R % (test people)"] + [f"fold {k}" for k in range(1, 11)], lines)


def lfw_picture(args):
    """View 2's accuracy per fold and arm (lfw.png); nothing before a fold has finished."""
    arms = lfw_arms()
    folds = {label: lfw_accuracies(lfw_fold_rows(arm, args)) for label, arm in arms}
    if not any(a is not None for accs in folds.values() for a in accs):
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
    width = 0.8 / len(folds)
    for j, (label, accs) in enumerate(folds.items()):
        shift = (j - (len(folds) - 1) / 2) * width
        xs = [k + shift for k in range(1, 11) if accs[k - 1] is not None]
        ax.bar(xs, [a for a in accs if a is not None], width, label=label)
    done = [a for accs in folds.values() for a in accs if a is not None]
    ax.set(xlabel="View 2 fold (people set of people.txt)", ylabel="test pairs' accuracy %",
           xticks=range(1, 11), ylim=(max(50, min(done) - 5), min(100, max(done) + 3)))
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, "LFW View 2: each fold trained on the other nine sets' people", "lfw.png",
                args)


def pyplot():
    """matplotlib's pyplot, drawing to files only (no display on a training machine)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, title, filename, args):
    """Title one of the study's figures, lay it out and write it into the runs folder."""
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, filename))
    pyplot().close(fig)


def omniglot_picture(args):
    """Figure 5 on Omniglot: the unseen figures against λ (α 0.5) and α (best λ)."""
    plt = pyplot()
    sweeps = [("λ (α = 0.5)", OMNIGLOT_LAMBDAS, lambda v, seed: omniglot_run(v, seed=seed))]
    if OMNIGLOT_BEST_LAM is not None:
        sweeps.append((f"α (λ = {OMNIGLOT_BEST_LAM:g})", OMNIGLOT_ALPHAS,
                       lambda v, seed: omniglot_run(OMNIGLOT_BEST_LAM, v, seed=seed)))
    fig, axes = plt.subplots(len(sweeps), len(OMNIGLOT_PANELS), squeeze=False,
                             figsize=(4 * len(OMNIGLOT_PANELS), 3.6 * len(sweeps)), dpi=80)
    softmax = last(run_name(**omniglot_run(0)), args)
    for row_i, (xlabel, values, settings) in enumerate(sweeps):
        for ax, (key, ylabel, _) in zip(axes[row_i], OMNIGLOT_PANELS):
            for seed, style in ((1, "s-"), (2, "x")):  # seed 2: the class-count study's K = 964
                points = [(i, last(run_name(**settings(v, seed)), args))
                          for i, v in enumerate(values)]
                points = [(i, float(r[key]), r["spread"]) for i, r in points
                          if r is not None and r.get(key)]
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], style, color="C1",
                            markersize=6 if seed == 1 else 9, label=f"seed {seed}")
                late = [p for p in points if p[2] > CONVERGED_POINTS]
                if late:  # still learning at the last epoch: a reading of the schedule too
                    ax.plot([p[0] for p in late], [p[1] for p in late], "o", mfc="none",
                            mec="C3", markersize=13,
                            label=f"not converged (spread > {CONVERGED_POINTS:g}), seed {seed}")
            if row_i == 0:  # the λ that had not settled at epoch 15, run on
                points = [(values.index(v), last(run_name(**omniglot_run(
                    v, epochs=OMNIGLOT_LONGER)), args)) for v in OMNIGLOT_LONGER_LAMBDAS]
                points = [(i, float(r[key])) for i, r in points if r is not None and r.get(key)]
                if points:
                    ax.plot(*zip(*points), "^", color="C2", markersize=8,
                            label=f"{OMNIGLOT_LONGER} epochs, seed 1")
            if softmax is not None and softmax.get(key):
                ax.axhline(float(softmax[key]), color="C1", linestyle=":",
                           label="softmax only (λ = 0), seed 1")
            if ax.lines:
                ax.legend(fontsize=8)
            ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
            ax.set(xlabel=xlabel, ylabel=ylabel)
            ax.grid(alpha=0.3)
    save_figure(fig, f"Omniglot, {OMNIGLOT_DIM}-D, 964 training characters: the 659 evaluation "
                "characters never trained on (cosine)",
                "omniglot_fig5.png", args)


def classes_picture(args):
    """The unseen figures against the number of training characters K (log axis),
    softmax only and OMNIGLOT_BEST_LAM, each seed a marker and their mean a line; the
    MNIST open-set runs (6 training classes, another dataset) beside them."""
    if OMNIGLOT_BEST_LAM is None:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(OMNIGLOT_PANELS), figsize=(4.2 * len(OMNIGLOT_PANELS), 3.8),
                             dpi=80)
    mnist = {0: last(run_name(**fig5_run(lam=0)), args),
             OMNIGLOT_BEST_LAM: last(run_name(**fig5_run(lam=OMNIGLOT_BEST_LAM)), args)}
    for ax, (key, ylabel, _) in zip(axes, OMNIGLOT_PANELS):
        for lam, color in ((0, "C0"), (OMNIGLOT_BEST_LAM, "C1")):
            label = "softmax only" if lam == 0 else f"λ {lam:g}"
            means = []
            for k in CLASS_COUNTS:
                rows = [last(run_name(**omniglot_run(lam, k=k, seed=s)), args) for s in (1, 2)]
                values = [float(r[key]) for r in rows if r is not None and r.get(key)]
                ax.plot([k] * len(values), values, "o", color=color, alpha=0.5, ms=4)
                if values:
                    means.append((k, sum(values) / len(values)))
            if means:
                ax.plot(*zip(*means), "-", color=color, label=label)
            other = mnist.get(lam)
            if key != "oneshot_error" and other is not None and other.get(key):
                ax.plot([6], [float(other[key])], "*", color=color, ms=11,
                        label=f"MNIST, 6 classes ({label})")
        ax.set(xscale="log", xlabel="training classes K", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    save_figure(fig, "Unseen classes against the number of training classes: Omniglot's 659 "
                "evaluation characters (stars: MNIST's 4 held-out digits, another dataset)",
                "classes.png", args)


def features_panel(ax, path, name, colors, centers):
    """Scatter a 2-D run's test_features.pt on ax, its centers marked if `centers` (softmax
    only leaves them untrained); title name + accuracy."""
    import torch
    ax.set_xticks([])
    ax.set_yticks([])
    if not os.path.exists(path):
        ax.set_title(f"{name}: not run yet", fontsize=10)
        return
    saved = torch.load(path, weights_only=True)
    x, y = saved["features"].numpy(), saved["labels"].numpy()
    for j in range(len(saved["classes"])):
        ax.scatter(x[y == j, 0], x[y == j, 1], s=0.5, color=colors(j), rasterized=True,
                   label=saved["classes"][j])
    if centers:
        c = saved["centers"].numpy()
        ax.scatter(c[:, 0], c[:, 1], s=30, c=[colors(j) for j in range(len(c))],
                   edgecolors="black", linewidths=1.2, zorder=3)
    ax.set_aspect("equal", adjustable="datalim")  # as utils.plot_features: no distortion
    ax.set_title(f"{name}: test accuracy {saved['accuracy']:.2f}%", fontsize=10)


def fig3_picture(args):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(FIG3_LAMBDAS), figsize=(4 * len(FIG3_LAMBDAS), 4.3), dpi=80)
    for ax, lam in zip(axes, FIG3_LAMBDAS):
        path = os.path.join(args.runs_dir, run_name(lam=lam), "test_features.pt")
        features_panel(ax, path, "softmax only" if lam == 0 else f"λ = {lam:g}",
                       plt.get_cmap("tab10"), centers=lam > 0)
    if axes[0].collections:
        axes[0].legend(loc="upper left", markerscale=8, fontsize=7, ncol=2)
    save_figure(fig, "MNIST test features (2-D, LeNet++), eq. 4 center update with α = 0.5; "
                "black-edged dots: the learned centers",
                "fig3_lambda.png", args)


def fashion_picture(args):
    """Closed set: the 2-D test features of both runs. Open set: the unseen classes'
    verification accuracy and MAP@R after every epoch, softmax only against center loss."""
    plt = pyplot()
    runs = fashion_runs(seed=1)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5), dpi=80)
    for ax, s in zip(axes[:2], runs[:2]):
        path = os.path.join(args.runs_dir, run_name(**s), "test_features.pt")
        features_panel(ax, path, describe(s), plt.get_cmap("tab10"), centers=s["lam"] > 0)
    if axes[0].collections:
        axes[0].legend(loc="upper left", markerscale=8, fontsize=7, ncol=2)
    for ax, key, ylabel in ((axes[2], "unseen_ver_accuracy", "unseen verification accuracy %"),
                            (axes[3], "unseen_map_at_r", "unseen MAP@R %")):
        for s, style in zip(runs[2:], ("o-", "s-")):
            rows = read_rows(os.path.join(args.runs_dir, run_name(**s)))
            rows = [r for r in rows if r.get(key, "") != ""]
            if rows:
                ax.plot([int(r["epoch"]) for r in rows], [float(r[key]) for r in rows], style,
                        label=describe(s))
        ax.set(xlabel="epoch", ylabel=ylabel,
               title=f"open set, {FIG5_DIM}-D: classes {HOLDOUT} never trained on")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    save_figure(fig, "Fashion-MNIST: closed-set test features (2-D, left) and unseen classes "
                "per epoch (right); cosine",
                "fashion.png", args)


def fig5_picture(args):
    plt = pyplot()
    sweeps = [("λ (α = 0.5)", FIG5_LAMBDAS, lambda v: dict(lam=v)),
              ("α (λ = 0.003)", FIG5_ALPHAS, lambda v: dict(lam=0.003, alpha=v))]
    metrics = [("ver_accuracy", "verification accuracy %"), ("map_at_r", "MAP@R %")]
    softmax = last(run_name(**fig5_run(lam=0)), args)  # what every α is weighed against
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=80)
    for col, (xlabel, values, settings) in enumerate(sweeps):
        for row_i, (key, ylabel) in enumerate(metrics):
            ax = axes[row_i, col]
            for prefix, style, color, split, short in (
                    ("", "o-", "C0", "seen classes", "seen"),
                    ("unseen_", "s--", "C1", f"unseen classes {HOLDOUT}", "unseen")):
                for seed in (1, 2):  # seed 2 exists for the seed2 group's runs only
                    points = [(i, last(run_name(**fig5_run(seed=seed, **settings(v))), args))
                              for i, v in enumerate(values)]
                    points = [(i, float(r[prefix + key])) for i, r in points if r is not None]
                    if points:
                        ax.plot(*zip(*points), style if seed == 1 else "x", color=color,
                                markersize=6 if seed == 1 else 9,
                                label=split if seed == 1 else f"{split}, seed 2")
                if col == 1 and softmax is not None:
                    ax.axhline(float(softmax[prefix + key]), color=color, linestyle=":",
                               label=f"{short}, softmax only (λ = 0)")
            ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
            ax.set(xlabel=xlabel, ylabel=ylabel)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    axes[0, 0].set_title("(a) λ, as the paper's Figure 5a")
    axes[0, 1].set_title("(b) α, as the paper's Figure 5b")
    save_figure(fig, f"MNIST, {FIG5_DIM}-D features, classes {HOLDOUT} never trained on: "
                "test pairs and retrieval, cosine",
                "fig5_sensitivity.png", args)


def ran(settings, args):
    """Whether any of these runs has finished in --runs-dir: a figure is drawn only then."""
    return any(finished(os.path.join(args.runs_dir, run_name(**s))) for s in settings)


def features_saved(settings, args):
    """Whether any of these runs kept its test_features.pt (the 2-D scatters need them)."""
    return any(os.path.exists(os.path.join(args.runs_dir, run_name(**s), "test_features.pt"))
               for s in settings)


def report(args):
    """tables.md and the figures of the groups that ran, from --runs-dir into --out-dir."""
    os.makedirs(args.out_dir, exist_ok=True)
    lines = ["# Center-loss study: tables", "",
             "Generated by `python experiments/study.py` from each run's metrics.csv (its last "
             f"epoch); schedule: `--lr-model {LR:g} {' '.join(SCHEDULE)} --max-epoch {MAX_EPOCH}` "
             f"(the feature-width table: `--lr-model {DIM_LR:g}`; Fashion-MNIST: `--max-epoch "
             f"{FASHION_MAX_EPOCH}`). \"spread of last 3 acc.\" "
             f"is max - min of the last three test accuracies (converged if <= "
             f"{CONVERGED_POINTS}). — marks a run not run or not finished yet.", ""]
    lines += fig3_tables(args) + open_set_tables(args) + seed_and_fashion_tables(args)
    lines += omniglot_tables(args) + lfw_tables(args)
    with open(os.path.join(args.out_dir, "tables.md"), "w") as f:
        f.write("\n".join(lines))
    all_groups = groups()
    pictures = [("lfw.png", lfw_picture, ran(all_groups["lfw-view2"], args)),
                ("fig3_lambda.png", fig3_picture, features_saved(all_groups["fig3"], args)),
                ("fig5_sensitivity.png", fig5_picture, ran(all_groups["fig5"], args)),
                ("fashion.png", fashion_picture, ran(all_groups["fashion"], args)),
                ("omniglot_fig5.png", omniglot_picture, ran(all_groups["omniglot"], args)),
                ("classes.png", classes_picture, ran(all_groups["classes"], args))]
    drawn = []
    for name, draw, due in pictures:
        if due:
            draw(args)
            drawn.append(name)
    print("\n".join(lines))
    print(f"Wrote {', '.join(['tables.md'] + drawn)} in {args.out_dir}")


def part_of(names, part, parts):
    """The runs of --part K/N: the K-th of every N, in order (1-based)."""
    return names[part - 1::parts]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Other flags (e.g. --gpu 0, --use-cpu) go to main.py.")
    p.add_argument("--data-root", default="./data")
    p.add_argument("--runs-dir", default=os.path.join(ROOT, "log", "study"))
    p.add_argument("--only", nargs="+", choices=list(groups()), help="run these groups only")
    p.add_argument("--report-only", action="store_true", help="build figures and tables only")
    p.add_argument("--out-dir", default=None,
                   help="where tables.md and the figures go (default: --runs-dir)")
    p.add_argument("--part", default="1/1", metavar="K/N",
                   help="run the K-th of every N runs only: N processes with parts 1/N ... N/N "
                        "(each with OMP_NUM_THREADS=1) share the machine's cores")
    args, passthrough = p.parse_known_args(argv)
    args.out_dir = args.out_dir or args.runs_dir
    try:
        part, parts = (int(v) for v in args.part.split("/"))
        assert 1 <= part <= parts
    except (ValueError, AssertionError):
        p.error(f"--part must be K/N with 1 <= K <= N, got {args.part}")
    if not args.report_only:
        runs = {}
        for group in args.only or groups():
            for settings in groups()[group]:  # a run shared by two groups runs once
                runs.setdefault(run_name(**settings), settings)
        for name in part_of(list(runs), part, parts):
            train(name, run_flags(**runs[name]), args, passthrough)
    report(args)


if __name__ == "__main__":
    main()
