"""Omniglot: the loader's splits, subsets, decoding and error lines on a tiny tree that
conftest.py writes in torchvision's layout, Lake et al.'s one-shot zip, and main.py end to
end. The real data is never needed."""
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import evaluation
import main
from conftest import ONE_SHOT_ANSWERS, omniglot_image, png_bytes
from test_main import FAST, NO_NETWORK, checkpoint, metrics

BACKGROUND, EVALUATION = 6, 4  # characters in the tiny tree


def test_splits_by_drawer(tiny_omniglot):
    o = datasets.load_omniglot(tiny_omniglot)
    train_images, train_labels = o["train"]
    test_images, test_labels = o["test"]
    assert train_images.shape == (BACKGROUND * 16, 28, 28) and train_images.dtype == torch.uint8
    assert train_labels.tolist() == [c for c in range(BACKGROUND) for _ in range(16)]
    files = o["extra"]["files"]
    assert len(files) == len(test_labels) == BACKGROUND * 4 + EVALUATION * 20
    seen, unseen = files[:BACKGROUND * 4], files[BACKGROUND * 4:]
    # seen test: the background characters' drawers 17-20; unseen: every evaluation image
    assert all(f.startswith("images_background/") for f in seen)
    assert sorted({f[-6:-4] for f in seen}) == ["17", "18", "19", "20"]
    assert all(f.startswith("images_evaluation/") for f in unseen)
    assert sorted({f[-6:-4] for f in unseen}) == [f"{d:02d}" for d in range(1, 21)]
    assert test_labels.tolist() == ([c for c in range(BACKGROUND) for _ in range(4)]
                                    + [BACKGROUND + c for c in range(EVALUATION) for _ in range(20)])
    assert o["num_seen"] == BACKGROUND and len(o["classes"]) == BACKGROUND + EVALUATION
    # A test image is the decoded file its path names.
    path = os.path.join(tiny_omniglot, "omniglot-py", unseen[5])
    assert torch.equal(test_images[BACKGROUND * 4 + 5],
                       torch.from_numpy(datasets._decode(path, path)))
    # classes name each label's character folder
    for label, f in ((0, seen[0]), (BACKGROUND, unseen[0])):
        assert f.split("/")[1:3] == o["classes"][label].split("/")


def test_train_classes_subset(tiny_omniglot):
    full = datasets.load_omniglot(tiny_omniglot)
    a = datasets.load_omniglot(tiny_omniglot, train_classes=3, seed=1)
    again = datasets.load_omniglot(tiny_omniglot, train_classes=3, seed=1)
    other = [datasets.load_omniglot(tiny_omniglot, train_classes=3, seed=s)["classes"][:3]
             for s in range(2, 8)]
    assert a["classes"] == again["classes"]  # the seed draws the classes
    assert any(o != a["classes"][:3] for o in other)
    chosen = a["classes"][:3]
    assert set(chosen) < set(full["classes"][:BACKGROUND]) and chosen == sorted(chosen)
    assert a["train"][0].shape[0] == 3 * 16 and a["train"][1].max() == 2
    # the unseen test stays every evaluation character, relabelled after the K seen ones
    assert a["classes"][3:] == full["classes"][BACKGROUND:]
    assert a["extra"]["files"][3 * 4:] == full["extra"]["files"][BACKGROUND * 4:]
    assert a["test"][1][3 * 4:].min() == 3
    # the seen test images are the chosen characters' drawers 17-20
    assert all(f.split("/")[1] + "/" + f.split("/")[2] in chosen
               for f in a["extra"]["files"][:12])
    for bad in (1, BACKGROUND + 1, 2.5):
        with pytest.raises(ValueError, match=f"--train-classes must be an integer from 2 to "
                                             f"{BACKGROUND}"):
            datasets.load_omniglot(tiny_omniglot, train_classes=bad)


def test_inverted_resized_and_normalised(tmp_path, tiny_omniglot):
    white = Image.fromarray(np.ones((105, 105), dtype=bool))
    black = Image.fromarray(np.zeros((105, 105), dtype=bool))
    half = np.ones((105, 105), dtype=bool)
    half[:, :50] = False  # strokes (black) on the left 50 of 105 columns
    for name, image in (("white", white), ("black", black), ("half", Image.fromarray(half))):
        image.save(tmp_path / f"{name}.png")
    decode = lambda n: datasets._decode(str(tmp_path / f"{n}.png"), n)  # noqa: E731
    assert decode("white").shape == (28, 28) and decode("white").dtype == np.uint8
    assert (decode("white") == 0).all() and (decode("black") == 255).all()  # inverted
    h = decode("half")
    # The edge falls at 50 / 105 * 28 = 13.3 output columns: the columns around it are
    # antialiased (grey, decreasing), not thresholded; the rows are all alike.
    assert (h == h[0]).all()
    assert (h[0, :12] == 255).all() and (h[0, 14:] == 0).all()
    assert 255 >= h[0, 12] > h[0, 13] > 0
    # normalised by the training images' own mean and std
    d = datasets.create("omniglot", batch_size=32, use_gpu=False, root=tiny_omniglot)
    pixels = datasets.load_omniglot(tiny_omniglot)["train"][0].double() / 255
    assert d.trainloader.mean == pytest.approx(pixels.mean().item(), rel=1e-12)
    assert d.trainloader.std == pytest.approx(pixels.std().item(), rel=1e-12)
    batch = torch.cat([x for x, _ in d.trainloader])
    assert batch.shape == (BACKGROUND * 16, 1, 28, 28)
    assert batch.double().mean().item() == pytest.approx(0, abs=1e-5)
    assert batch.double().std().item() == pytest.approx(1, abs=1e-4)


def test_one_shot_answers_come_from_class_labels(tiny_omniglot):
    runs = datasets.load_one_shot(tiny_omniglot)
    assert runs["support"].shape == (2, 4, 28, 28) and runs["queries"].shape == (2, 4, 28, 28)
    assert runs["answers"].tolist() == ONE_SHOT_ANSWERS  # not file order (0, 1, 2, 3)
    # each query shows the character of its answer's training image
    for r, answers in enumerate(ONE_SHOT_ANSWERS):
        for i, a in enumerate(answers):
            q = runs["queries"][r, i].double()
            dist = [(q - s.double()).abs().sum() for s in runs["support"][r]]
            assert int(np.argmin(dist)) == a


def brute_one_shot(support, queries, answers, metric):
    errors = []
    for r in range(len(support)):
        wrong = 0
        for q in range(queries.shape[1]):
            best, best_score = None, None
            for w in range(support.shape[1]):
                a, b = queries[r, q].double(), support[r, w].double()
                score = (a @ b / (a.norm() * b.norm()) if metric == "cosine"
                         else -(a - b).norm())
                if best_score is None or score > best_score:
                    best, best_score = w, score
            wrong += int(best != int(answers[r, q]))
        errors.append(wrong / queries.shape[1])
    return float(np.mean(errors)), float(np.std(errors))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_one_shot_error_matches_brute_force(metric):
    g = torch.Generator().manual_seed(0)
    support = torch.randn(5, 6, 4, generator=g)
    answers = torch.randint(0, 6, (5, 7), generator=g)
    queries = support.gather(1, answers.unsqueeze(2).expand(-1, -1, 4))
    queries = queries + 1.2 * torch.randn(queries.shape, generator=g)
    got = evaluation.one_shot_error(support, queries, answers, metric=metric)
    error, std = brute_one_shot(support, queries, answers, metric)
    assert 0 < error < 1
    assert got["error"] == pytest.approx(error, abs=1e-12)
    assert got["error_std"] == pytest.approx(std, abs=1e-12)
    assert got["per_run"].shape == (5,)


def test_one_shot_error_checks_its_inputs():
    s, q, a = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="support and queries must be"):
        evaluation.one_shot_error(s, q[:, :, :3], a)
    with pytest.raises(ValueError, match="answers must be an integer tensor of shape"):
        evaluation.one_shot_error(s, q, a[:, :4])
    with pytest.raises(ValueError, match=r"answers must be indices in 0..2, got values from 0 to 3"):
        evaluation.one_shot_error(s, q, a + 3 * (torch.arange(5) == 4))


# ----------------------------------------------------------------- data that is not right

def copy_tree(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def error_line(monkeypatch, *flags):
    """main.py's one-line error for these flags, offline: what sys.exit was given."""
    for key, value in NO_NETWORK.items():  # torchvision's downloads fail at once
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exc:
        main.main(["--use-cpu", *flags])
    assert isinstance(exc.value.code, str) and "\n" not in exc.value.code
    return exc.value.code


def decode_in_processes(monkeypatch):
    """From now on datasets decodes even the tiny tree in forked processes (as the real
    one, on Linux with 2+ CPUs); returns the start methods of the pools it makes."""
    forks, real = [], datasets.multiprocessing.get_context
    monkeypatch.setattr(datasets.multiprocessing, "get_context",
                        lambda method: forks.append(method) or real(method))
    monkeypatch.setattr(datasets.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(datasets, "DECODE_POOL_MIN_FILES", 1)
    return forks


@pytest.mark.parametrize("processes", [False, True])
def test_truncated_png_is_named(tmp_path, tiny_omniglot, monkeypatch, processes):
    root = copy_tree(tiny_omniglot, tmp_path / "root")
    path = os.path.join(root, "omniglot-py", "images_evaluation", "Gamma", "character02")
    victim = os.path.join(path, sorted(os.listdir(path))[3])
    with open(victim, "r+b") as f:
        f.truncate(40)
    forks = decode_in_processes(monkeypatch) if processes else []
    with pytest.raises(ValueError, match=f"{victim}: cannot decode this PNG"):
        datasets.load_omniglot(root)
    assert forks == (["fork"] if processes else [])


def decoded_files(monkeypatch):
    """The Omniglot PNGs (not the one-shot zip's members) that datasets decodes from now on."""
    calls, real = [], datasets._decode
    monkeypatch.setattr(datasets, "_decode",
                        lambda source, name: calls.append(name) or real(source, name))
    return lambda: [n for n in calls if "all_runs.zip" not in n]


def loaded(root, **kwargs):
    o = datasets.load_omniglot(root, **kwargs)
    return [*o["train"], *o["test"], torch.tensor([o["mean"], o["std"]])]


def test_cache_equals_decoding_and_follows_changed_files(tmp_path, tiny_omniglot, monkeypatch):
    root = copy_tree(tiny_omniglot, tmp_path / "root")
    in_root = lambda: sorted(os.path.join(d, n) for d, _, names in os.walk(root)  # noqa: E731
                             for n in names)
    files_before = in_root()
    monkeypatch.setenv("CENTER_LOSS_CACHE", "")  # no cache: the reference
    reference = loaded(root)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CENTER_LOSS_CACHE", str(cache))
    decoded = decoded_files(monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(loaded(root), reference))
    assert len(decoded()) == 10 * 20 and len(os.listdir(cache)) == 1
    assert in_root() == files_before  # never written inside the data root
    assert all(torch.equal(a, b) for a, b in zip(loaded(root), reference))
    assert len(decoded()) == 10 * 20  # the second load decoded nothing

    # A file rewritten with another image is decoded again; the rest come from the cache.
    folder = os.path.join(root, "omniglot-py", "images_background", "Alpha", "character02")
    victim = os.path.join(folder, sorted(os.listdir(folder))[17])  # drawer 18: seen test
    with open(victim, "wb") as f:
        f.write(png_bytes(omniglot_image(40, 3)))
    changed = loaded(root)
    assert decoded()[10 * 20:] == [victim]
    monkeypatch.setenv("CENTER_LOSS_CACHE", "")
    assert all(torch.equal(a, b) for a, b in zip(changed, loaded(root)))
    assert not torch.equal(changed[2], reference[2])  # the change reached the test images

    # A file truncated after it was cached is named, as without a cache.
    monkeypatch.setenv("CENTER_LOSS_CACHE", str(cache))
    with open(victim, "r+b") as f:
        f.truncate(40)
    with pytest.raises(ValueError, match=f"{victim}: cannot decode this PNG"):
        datasets.load_omniglot(root)


def test_decoding_in_processes_equals_one_process(tiny_omniglot, monkeypatch):
    monkeypatch.setenv("CENTER_LOSS_CACHE", "")
    reference = loaded(tiny_omniglot)
    forks = decode_in_processes(monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(loaded(tiny_omniglot), reference))
    assert forks == ["fork"]


def test_cache_of_a_subset_grows_and_an_unwritable_cache_is_skipped(tmp_path, tiny_omniglot,
                                                                     monkeypatch):
    reference = loaded(tiny_omniglot)  # this test's own cache, empty until now
    other = tmp_path / "other"
    monkeypatch.setenv("CENTER_LOSS_CACHE", str(other))
    decoded = decoded_files(monkeypatch)
    loaded(tiny_omniglot, train_classes=2, seed=3)  # 2 of 6 background characters + unseen
    assert len(decoded()) == (2 + 4) * 20
    assert all(torch.equal(a, b) for a, b in zip(loaded(tiny_omniglot), reference))
    assert len(decoded()) == 10 * 20  # only the 4 characters not cached yet
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("CENTER_LOSS_CACHE", str(tmp_path / "a_file" / "cache"))
    assert all(torch.equal(a, b) for a, b in zip(loaded(tiny_omniglot), reference))


def test_missing_drawer_is_named(tmp_path, tiny_omniglot):
    root = copy_tree(tiny_omniglot, tmp_path / "root")
    folder = os.path.join(root, "omniglot-py", "images_background", "Beta", "character01")
    os.remove(os.path.join(folder, sorted(os.listdir(folder))[6]))  # drawer 7
    with pytest.raises(ValueError, match=f"{folder} must hold .*drawers missing: \\[7\\]"):
        datasets.load_omniglot(root)


def test_zip_without_class_labels_is_named(tmp_path, tiny_omniglot):
    root = copy_tree(tiny_omniglot, tmp_path / "root")
    path = os.path.join(root, "omniglot-one-shot", "all_runs.zip")
    with zipfile.ZipFile(os.path.join(tiny_omniglot, "omniglot-one-shot", "all_runs.zip")) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            if name != "run02/class_labels.txt":
                z.writestr(name, data)
    with pytest.raises(ValueError, match=f"{path} has no run02/class_labels.txt"):
        datasets.load_one_shot(root)


def test_undecodable_png_in_the_zip_is_named(tmp_path, tiny_omniglot):
    root = copy_tree(tiny_omniglot, tmp_path / "root")
    path = os.path.join(root, "omniglot-one-shot", "all_runs.zip")
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("run01/training/class05.png", b"not a png")
    with pytest.raises(ValueError, match="all_runs.zip:run01/training/class05.png: cannot decode"):
        datasets.load_one_shot(root)


def test_offline_without_omniglot_is_one_line(tmp_path, monkeypatch):
    line = error_line(monkeypatch, "-d", "omniglot", "--data-root", str(tmp_path),
                      "--save-dir", str(tmp_path / "out"))
    folder = os.path.join(str(tmp_path), "omniglot-py", "images_background")
    assert line.startswith(f"error: cannot load Omniglot from {folder} and cannot download it (")
    assert line.endswith("); extract images_background.zip there (torchvision's layout "
                         "images_background/<Alphabet>/characterNN/<id>_<drawer>.png), or "
                         "pass --data-root to the folder that holds omniglot-py/")


def test_offline_without_one_shot_zip_is_one_line(tmp_path, tiny_omniglot, monkeypatch):
    root = copy_tree(tiny_omniglot, tmp_path / "root")
    os.remove(os.path.join(root, "omniglot-one-shot", "all_runs.zip"))
    line = error_line(monkeypatch, "-d", "omniglot", "--data-root", root,
                      "--save-dir", str(tmp_path / "out"))
    assert line.startswith(f"error: cannot find Lake et al.'s one-shot runs at "
                           f"{os.path.join(root, 'omniglot-one-shot', 'all_runs.zip')} and "
                           f"cannot download them")


def test_truncated_mnist_file_names_its_size(tmp_path, tiny_data, monkeypatch):
    root = copy_tree(tiny_data, tmp_path / "root")
    path = os.path.join(root, "MNIST", "raw", "train-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(1000)
    for name in os.listdir(os.path.join(root, "MNIST")):  # torchvision's processed cache
        if name != "raw":
            shutil.rmtree(os.path.join(root, "MNIST", name))
    line = error_line(monkeypatch, "--data-root", root, "--save-dir", str(tmp_path / "out"))
    assert line == (f"error: mnist: {path} is 1,000 bytes, but its header (256 x 28 x 28) "
                    f"needs 200,720: the file is truncated; delete it to have it downloaded "
                    f"again, or replace it")


# ------------------------------------------------------------------------------ end to end

def test_train_and_evaluate_omniglot(tmp_path, tiny_omniglot, capsys, monkeypatch):
    save_dir = str(tmp_path / "run")
    main.main(["-d", "omniglot", "--data-root", tiny_omniglot, "--save-dir", save_dir, *FAST,
               "--max-epoch", "2", "--feat-dim", "8", "--optimizer", "adam",
               "--train-classes", "4", "--seed", "3"])
    out = capsys.readouterr().out
    assert ("Training on 64 images of 4 classes; testing on 96 images: 16 of the seen classes, "
            "80 of the unseen classes: 4 evaluation characters; one-shot: 2 runs of 4-way") in out
    rows = metrics(save_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("unseen_map_at_r", "unseen_ver_accuracy", "unseen_tar_all_1e-04",
                "tar_all_1e-05", "oneshot_error", "oneshot_error_l2", "oneshot_error_std"):
        assert rows[-1][key] != "", key
    assert float(rows[-1]["oneshot_error"]) in (0, 25, 50, 75, 100)  # 4 queries a run, 2 runs
    saved = torch.load(os.path.join(save_dir, "test_features.pt"), weights_only=True)
    files, labels = saved["files"], saved["labels"]
    assert len(files) == len(labels) == 96 and saved["num_seen"] == 4
    assert files[16] == "images_evaluation/Delta/character01/0009_01.png"
    assert all(labels[i] >= 4 for i, f in enumerate(files) if "evaluation" in f)
    # The one-shot figures printed are those of the saved model's features, recomputed here.
    ckpt = checkpoint(save_dir)
    assert ckpt["args"]["train_classes"] == 4 and ckpt["args"]["optimizer"] == "adam"
    # --evaluate takes --train-classes and --seed from the checkpoint and gives the same
    # figures as the last training evaluation.
    path = os.path.join(save_dir, "checkpoint.pth.tar")
    main.main(["-d", "omniglot", "--data-root", tiny_omniglot, "--use-cpu", "--save-dir",
               save_dir, "--evaluate", "--resume", path])
    evaluated = capsys.readouterr().out
    assert f"Evaluating {path} (epoch 2); nothing is trained" in evaluated
    figures = lambda text: [l for l in text.splitlines()  # noqa: E731,E741
                            if l.startswith(("Accuracy", "Retrieval", "Verification", "One-shot"))]
    assert len(figures(evaluated)) == 12  # accuracy, 5 lines per split (cosine, L2), one-shot
    assert figures(evaluated) == figures(out)[-12:]
    # A resume with another seed would train other classes: refused, naming the seed.
    line = error_line(monkeypatch, "-d", "omniglot", "--data-root", tiny_omniglot,
                      "--save-dir", save_dir, "--train-classes", "4", "--feat-dim", "8",
                      "--optimizer", "adam", "--max-epoch", "3", "--resume", path)
    assert line == (f"error: --resume {path} was trained on other classes than --seed 1 "
                    f"draws: pass the checkpoint's --seed 3")


def test_omniglot_flags_are_checked(capsys):
    for flags, fragment in ((["--train-classes", "30"], "--train-classes is for -d omniglot or lfw, not mnist"),
                            (["-d", "omniglot", "--holdout-classes", "1,2"],
                             "omniglot has its own unseen classes")):
        with pytest.raises(SystemExit) as exc:
            main.main(flags)
        assert exc.value.code == 2
        assert fragment in capsys.readouterr().err
