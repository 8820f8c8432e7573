"""log/runs.csv: every committed run, its command and the device it ran on.

    python experiments/runs_index.py            # rewrites log/runs.csv

A run made since runs write run.json is described by that record. An older run by what its
log and the git history tell: the command is rebuilt from the log's Args line (the flags
that differ from main.py's defaults for its dataset, with --save-dir the folder it sits in
now; --data-root, --gpu and -j, the machine's, left out), the device is the log's "Currently
using CPU / GPU" line, named where the commit that brought the log names the machine, and
the commit is that one (the log's last change other than a move). Columns left empty are
not known.
"""
import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import main  # noqa: E402

FIELDS = ["run", "command", "device", "precision", "torch", "commit", "date", "source"]
# Flags of the machine a run was made on, not of the run.
MACHINE = {"data_root", "save_dir", "workers", "gpu", "help"}
# Machines named in the commit messages that brought the older logs.
MACHINES = [("H200", "GPU: NVIDIA H200"), ("H100", "GPU: NVIDIA H100"),
            ("EPYC", "CPU: AMD EPYC, 2 cores"), ("Xeon", "CPU: Intel Xeon, 2 cores")]


def git(*words):
    return subprocess.run(["git", "-C", ROOT, *words], capture_output=True,
                          text=True).stdout.strip()


def run_folders(log_dir):
    """The folders under log_dir that git tracks a log_*.txt in, sorted."""
    files = git("ls-files", "--", os.path.relpath(log_dir, ROOT)).splitlines()
    return sorted({os.path.dirname(f) for f in files
                   if re.fullmatch(r"log_[^/]+\.txt", os.path.basename(f))})


def logged_args(text):
    """The Namespace of a log's first Args: line, as a dict."""
    line = next(line for line in text.splitlines() if line.startswith("Args:"))
    return vars(eval(line[len("Args:"):], {"Namespace": argparse.Namespace}))


def rebuilt_command(args, folder):
    """python main.py with the flags whose logged values differ from the defaults that
    main.py gives the run's dataset; LFW's recipe flags always spelled out, so that the
    command keeps its meaning when the recipe (main.LFW_RECIPE) changes."""
    parser = main.get_parser()
    dataset = args["dataset"]
    defaults = parser.parse_args(["-d", dataset])
    main.resolve_defaults(defaults, set(main.LFW_RECIPE))  # the defaults, no recipe
    words = ["python", "main.py"] + (["-d", dataset] if dataset != "mnist" else [])
    for action in parser._actions:
        key = action.dest
        spelled = dataset == "lfw" and key in main.LFW_RECIPE
        if (key in MACHINE or key == "dataset" or key not in args
                or (args[key] == getattr(defaults, key, None) and not spelled)):
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:  # a switch
            words += [flag] if args[key] else []
        else:
            value = args[key]
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(words + ["--save-dir", folder])


def from_history(folder, log_name, text):
    """(device, commit, date) of an older run, from its log, the commit that brought it
    and, where that one names no machine, the later commits that touched the log."""
    log = os.path.join(folder, log_name)
    commit = git("log", "--follow", "--diff-filter=AM", "-1", "--format=%H%n%ad%n%B",
                 "--date=short", "--", log).split("\n", 2)
    sha, date, message = (commit + ["", "", ""])[:3]
    later = git("log", "--follow", "--format=%B", f"{sha}..HEAD", "--", log) if sha else ""
    gpu = "Currently using GPU" in text
    device = "GPU, model not recorded" if gpu else "CPU, model not recorded"
    for words in (message, later):
        found = [name for word, name in MACHINES
                 if word in words and name.startswith("GPU") == gpu]
        if found:
            return found[0], sha, date
    return device, sha, date


def row(folder):
    path = os.path.join(ROOT, folder)
    record = os.path.join(path, "run.json")
    if os.path.exists(record):
        with open(record) as f:
            r = json.load(f)
        words = shlex.split(r["command"])
        if r["cwd"] == "." and os.path.isabs(words[1]) and words[1].endswith("/main.py"):
            words[1] = "main.py"  # a runner's absolute path to its checkout's main.py
        return dict(run=folder, command=shlex.join(words), device=r["device"],
                    precision=r["precision"], torch=r["torch"], commit=r["commit"] or "",
                    date=r["start"][:10], source="run.json")
    log_name = next(f for f in sorted(os.listdir(path)) if f.startswith("log_"))
    with open(os.path.join(path, log_name)) as f:
        text = f.read()
    args = logged_args(text)
    device, sha, date = from_history(folder, log_name, text)
    return dict(run=folder, command=rebuilt_command(args, folder), device=device,
                precision="bf16 autocast" if args.get("amp") else "fp32", torch="",
                commit=sha, date=date, source="log and git history")


def main_(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log-dir", default=os.path.join(ROOT, "log"))
    p.add_argument("--out", default=os.path.join(ROOT, "log", "runs.csv"))
    args = p.parse_args(argv)
    rows = [row(folder) for folder in run_folders(args.log_dir)]
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} runs in {args.out}")


if __name__ == "__main__":
    main_()
