"""Where the face sits in LFW's deep-funneled images: the evidence for datasets.py's crop.

    python experiments/lfw_crop.py --data-root ./data     # writes log/study/lfw_crop.png

The mean of the View 1 training images (peopleDevTrain.txt: 9,525 images of 4,038 people,
never a test person), at full resolution, with the two squares datasets.py uses: the
144 x 144 px it keeps (72 x 72 at half resolution) and the 128 x 128 px the network sees
(64 x 64; training crops move it by up to 8 px). Beside it, the mean brightness of the
middle third of each row, whose dips are the eyes and the mouth; printed are the rows of
those dips and where the face's edges fall (the mean image's strongest horizontal change
left and right of the centre).
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import datasets  # noqa: E402


def mean_face(data_root):
    from PIL import Image
    p = datasets.lfw_protocol(data_root, "view1")
    folder = os.path.join(os.path.abspath(data_root), "lfw-py", "lfw-deepfunneled")
    total, n = np.zeros((250, 250, 3)), 0
    for name, count in p["train_people"]:
        for i in range(1, count + 1):
            with Image.open(os.path.join(folder, datasets._lfw_file(name, i))) as im:
                total += np.asarray(im.convert("RGB"), dtype=np.float64)
            n += 1
    return total / n, n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="./data")
    p.add_argument("--out", default=os.path.join(ROOT, "log", "study", "lfw_crop.png"))
    args = p.parse_args()
    mean, n = mean_face(args.data_root)
    grey = mean.mean(2)
    rows = grey[:, 83:167].mean(1)  # the middle third of each row
    eyes = 80 + int(np.argmin(rows[80:130]))
    mouth = 135 + int(np.argmin(rows[135:185]))
    edge = np.abs(np.diff(grey[90:170].mean(0)))  # left/right face edges, eye-to-mouth band
    left, right = int(np.argmax(edge[40:115])) + 40, int(np.argmax(edge[135:210])) + 135
    print(f"mean of {n:,} View 1 training images: eyes at row {eyes}, mouth at row {mouth}, "
          f"face edges at columns {left} and {right} (of 250)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 4.2), dpi=80,
                               gridspec_kw={"width_ratios": [3, 1]})
    a.imshow(mean.astype(np.uint8))
    for side, colour, label in ((2 * datasets.LFW_STORED, "tab:blue", "kept: 144 px"),
                                (2 * datasets.LFW_INPUT, "tab:orange", "seen: 128 px")):
        lo = (250 - side) / 2
        a.add_patch(Rectangle((lo, lo), side, side, fill=False, color=colour, label=label))
    a.axhline(eyes, color="white", lw=0.5, ls=":")
    a.axhline(mouth, color="white", lw=0.5, ls=":")
    a.legend(fontsize=8, loc="lower right")
    a.set_title(f"mean of {n:,} View 1 training images", fontsize=10)
    b.plot(rows, np.arange(250))
    b.invert_yaxis()
    b.set(xlabel="mean brightness,\nmiddle third of the row", ylabel="row")
    for r in (eyes, mouth):
        b.axhline(r, color="grey", lw=0.5, ls=":")
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
