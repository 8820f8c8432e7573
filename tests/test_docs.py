"""The repository's text as a reader meets it: no labels of an internal tracker that a reader
cannot follow (name the study or the question instead), and every link between the markdown
files lands on a file that exists and, with an anchor, on a heading of that file."""
import math
import os
import re
import subprocess
import sys
import unicodedata
from functools import lru_cache
from urllib.parse import unquote

import pytest

from conftest import ROOT

BINARY = (".png", ".gif", ".jpg", ".jpeg", ".pt", ".pth", ".tar", ".zip", ".gz", ".npy", ".npz")

# Built from pieces so that this file does not carry the labels it looks for: a tracker
# number (the word and a two-digit number from 10 to 29, or an anchor made of them), and a
# sub-item label: a 4 and a letter from a to d in parentheses.
WORD = "iss" + "ue"
LABEL = re.compile(WORD + r"[ _-]?#?[12][0-9]|\(" + "4" + r"[a-d]\)", re.IGNORECASE)


def git(*words):
    return subprocess.run(["git", "-C", ROOT, *words], capture_output=True, text=True)


in_git = pytest.mark.skipif(git("rev-parse", "--is-inside-work-tree").returncode != 0,
                            reason="not a git checkout")


def repository_files():
    """Every file git tracks, and new ones it would track (not ignored), that exists."""
    out = git("ls-files", "--cached", "--others", "--exclude-standard", "-z").stdout
    paths = sorted(set(p for p in out.split("\0") if p))
    return [p for p in paths if os.path.isfile(os.path.join(ROOT, p))]


def text_of(path):
    """The file's text, or None for a binary file (by its name, or a NUL byte as git sees it)."""
    if path.lower().endswith(BINARY):
        return None
    with open(os.path.join(ROOT, path), "rb") as f:
        data = f.read()
    if b"\0" in data[:8000]:
        return None
    return data.decode("utf-8", errors="replace")


@in_git
def test_no_tracker_labels():
    found = []
    for path in repository_files():
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in LABEL.finditer(line):
                found.append(f"{path}:{number}: {match.group(0)!r} in {line.strip()[:100]!r}")
    assert not found, "tracker labels a reader cannot follow:\n" + "\n".join(found)


def test_label_pattern():
    """The pattern catches what it is meant to, and not ordinary text."""
    for text in [WORD + " 17", WORD.capitalize() + " 18's", "#omniglot-" + WORD + "-17",
                 "study (" + "4b)", "(" + "4c)", WORD.upper() + " 21"]:
        assert LABEL.search(text), text
    for text in ["an " + WORD + " of the journal", WORD + " 3", "(4)", "4b", "issued 170"]:
        assert not LABEL.search(text), text


FENCE = re.compile(r"^ *(```|~~~).*?^ *\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)


def without_code(markdown):
    """Fenced blocks dropped: a '# comment' there is no heading, a '](x)' there no link."""
    return FENCE.sub("", markdown)


def slug(heading):
    """GitHub's anchor for a heading: its rendered text lower-cased, punctuation other than
    '-' and '_' dropped, each space a hyphen."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)      # a link shows its text
    text = re.sub(r"<[^>]+>", "", text)                          # inline HTML
    text = re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)         # emphasis markers
    kept = []
    for char in text.lower():
        if char in " -_" or char.isalnum() or unicodedata.category(char).startswith("M"):
            kept.append(char)
    return "".join(kept).replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path):
    """The anchors GitHub gives the headings of one markdown file (repeats get -1, -2, ...)."""
    with open(path, encoding="utf-8") as f:
        text = without_code(f.read())
    seen, result = {}, set()
    for match in HEADING.finditer(text):
        base = slug(match.group(2))
        result.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return result


def test_slug_matches_github():
    """Anchors as GitHub makes them, from headings of this repository."""
    for heading, anchor in [
            ("`--amp` on a CPU", "--amp-on-a-cpu"),
            ("Several processes or machines (torchrun)", "several-processes-or-machines-torchrun"),
            ("The λ / α study", "the-λ--α-study"),
            ("Figure 5a on Omniglot: λ at α 0.5 (964 training characters)",
             "figure-5a-on-omniglot-λ-at-α-05-964-training-characters"),
            ("MNIST: softmax only vs softmax + center loss", "mnist-softmax-only-vs-softmax--center-loss")]:
        assert slug(heading) == anchor


@in_git
def test_markdown_links_resolve():
    broken, checked = [], 0
    for source in [p for p in repository_files() if p.endswith(".md")]:
        with open(os.path.join(ROOT, source), encoding="utf-8") as f:
            text = CODE_SPAN.sub(lambda m: "code", without_code(f.read()))
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or not target:
                continue                                         # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(source), file_part)) \
                if file_part else os.path.join(ROOT, source)
            checked += 1
            if not os.path.exists(path):
                broken.append(f"{source}: {target}: no such file")
            elif anchor and (not path.endswith(".md") or unquote(anchor) not in anchors(path)):
                broken.append(f"{source}: {target}: no heading with that anchor")
    assert checked > 0
    assert not broken, "broken links:\n" + "\n".join(broken)


def readme_python(which=0):
    """A fenced Python block of README.md: the first is the training loop a copier starts
    from, the second the face / re-ID recipe."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"^```python\n(.*?)^```", f.read(), re.MULTILINE | re.DOTALL)
    assert len(blocks) > which, "README.md has too few ```python blocks"
    return blocks[which]


def test_readme_loop_runs_and_moves_the_centers_to_the_features():
    """As a copier runs it: a fresh interpreter in the repository, on the CPU. It prints
    each step's losses; the centers, stepped by their own SGD, close in on the features."""
    result = subprocess.run([sys.executable, "-c", readme_python()], cwd=ROOT, timeout=300,
                            capture_output=True, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # e.g. the forgotten-optimizer one
    steps = re.findall(r"^step (\d+): loss (\S+), center loss (\S+)$", result.stdout, re.M)
    assert [int(s[0]) for s in steps] == list(range(len(steps))) and len(steps) >= 3
    center = [float(s[2]) for s in steps]
    assert all(math.isfinite(float(s[1])) for s in steps)
    assert center[-1] < 0.8 * center[0], center


def test_readme_face_recipe_runs_with_its_values():
    """The second loop, as a copier runs it (a fresh interpreter, the CPU): a torchvision
    backbone with a BN embedding, center loss at λ 0.003 with eq. 4, the model's rate on a
    cosine schedule while the centers keep α; the center loss falls."""
    code = readme_python(1)
    assert "torchvision.models." in code and "nn.BatchNorm1d(feat_dim)" in code
    assert "weight_cent, lr_cent = 0.003, 0.5" in code and 'update="paper"' in code
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=300,
                            capture_output=True, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    epochs = re.findall(r"^epoch (\d+): center loss (\S+), lr (\S+), centers' lr (\S+)$",
                        result.stdout, re.M)
    assert [int(e[0]) for e in epochs] == [0, 1], result.stdout
    center = [float(e[1]) for e in epochs]
    assert all(math.isfinite(c) for c in center) and center[1] < center[0], center
    assert [float(e[2]) for e in epochs] == [0.05, 0.0]  # cosine over 2 epochs from 0.1
    assert [float(e[3]) for e in epochs] == [0.5, 0.5]  # the centers' α untouched


# Each figure written once: README's Results table is where a headline figure is typed; the
# readings (docs/*.md) and the index of the runs (log/README.md) point to it, and each page
# stays short enough to read.
SIZE_LIMITS = {"README.md": 15_360, "log/README.md": 8_192}
DOCS_PAGE_LIMIT = 25_600


def test_pages_stay_short():
    sizes = {path: os.path.getsize(os.path.join(ROOT, path)) for path in SIZE_LIMITS}
    docs = os.path.join(ROOT, "docs")
    pages = {f"docs/{name}": os.path.getsize(os.path.join(docs, name))
             for name in sorted(os.listdir(docs)) if name.endswith(".md")}
    assert pages, "no docs/*.md pages"
    limits = {**SIZE_LIMITS, **{page: DOCS_PAGE_LIMIT for page in pages}}
    too_long = [f"{path}: {size:,} bytes, at most {limits[path]:,}"
                for path, size in {**sizes, **pages}.items() if size > limits[path]]
    assert not too_long, "\n".join(too_long)


FIGURE = re.compile(r"(?<![\w.])\d+\.\d+(?!\d)")


def results_figures(readme):
    """The figures of README's Results table: the numbers with a decimal point in its result
    columns (those headed 'softmax ...'; the flags and the runs are left out)."""
    section = re.search(r"^## Results\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Results' section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("|")]
    assert len(rows) > 2, "the Results section has no table"
    cells = lambda row: [c.strip() for c in row.strip().strip("|").split("|")]
    columns = [i for i, name in enumerate(cells(rows[0])) if name.startswith("softmax")]
    assert columns, "no result columns in the Results table"
    figures = []
    for row in rows[2:]:
        for i in columns:
            for figure in FIGURE.findall(cells(row)[i]):
                if figure not in figures:
                    figures.append(figure)
    return figures


def occurrences(figure, text):
    """How often the figure is typed: 86.32, not 186.32, 86.321 or 86.32.5."""
    return len(re.findall(r"(?<![\d.])" + re.escape(figure) + r"(?!\d|\.\d)", text))


def test_results_figure_parser():
    readme = ("## Results\n\n| dataset | flags | softmax only | softmax + center loss | runs |\n"
              "|---|---|---:|---:|---|\n"
              "| MNIST | `--lr-model 0.01`, λ 1 | 98.65% / 98.75%; MAP@R 75.16% | 99.12% | "
              "`log/v1.2/` |\n| LFW | seed 1 | 84.32 ± 0.63%; AUC 0.921 | 86.32 ± 0.58% | |\n\n"
              "## Next\n\n| a | 1.5 |\n")
    assert results_figures(readme) == ["98.65", "98.75", "75.16", "99.12", "84.32", "0.63",
                                       "0.921", "86.32", "0.58"]
    assert occurrences("86.32", "86.32%, 186.32, 86.321, 86.32.1, (86.32)") == 2


def hand_written_markdown():
    """Every markdown file git tracks or would track, but README.md and the generated
    tables.md files."""
    return [p for p in repository_files() if p.endswith(".md") and p != "README.md"
            and os.path.basename(p) != "tables.md"]


@in_git
def test_each_results_figure_is_written_once():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    figures = results_figures(readme)
    assert len(figures) >= 20, figures
    texts = {}
    for path in hand_written_markdown():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            texts[path] = f.read()
    assert "log/README.md" in texts and any(p.startswith("docs/") for p in texts)
    problems = []
    for figure in figures:
        in_readme = occurrences(figure, readme)
        if in_readme != 1:
            problems.append(f"{figure}: {in_readme} times in README.md, want once")
        elsewhere = {p: n for p, t in texts.items() if (n := occurrences(figure, t))}
        if sum(elsewhere.values()) > 1:
            problems.append(f"{figure}: {elsewhere} in the other markdown, want at most once "
                            "in all of it together")
    assert not problems, "Results figures typed more than once:\n" + "\n".join(problems)
