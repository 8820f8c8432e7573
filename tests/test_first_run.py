"""What a new user meets first (issue 18): -h with every default and every dataset."""

import datasets
import main
from test_main import cli


def shown_default(action):
    if action.default is False:
        return "off"
    return "none" if action.default == "" else str(action.default)


def test_help_shows_every_default_and_names_every_dataset():
    parser = main.get_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        formatter = parser._get_formatter()  # this one flag's block of -h
        formatter.add_argument(action)
        block = " ".join(formatter.format_help().split())
        assert f"(default: {shown_default(action)})" in block, block
    description = " ".join(parser.description.split())
    assert all(name in description for name in datasets.DATASETS), description

    result = cli("-h")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--max-epoch MAX_EPOCH epochs to train (default: 100)" in text
    assert "--lr-model LR_MODEL learning rate for model (default: 0.001)" in text
    assert "--plot plot features every epoch, and GIFs (default: off)" in text
