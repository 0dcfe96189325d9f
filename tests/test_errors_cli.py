"""The coded messages (errors.py) and the train command's flags (cli.py, project.yml)."""
from __future__ import annotations

import dataclasses
import re
import shlex
import warnings
from pathlib import Path

import pytest

from spacy_padellm.apply_errors import ApplyErrors
from spacy_padellm.cli import TRAIN_FLAG_TYPES, build_parser
from spacy_padellm.errors import Errors, PaDeLLMError, Warnings
from spacy_padellm.training.config import TrainConfig, field_help

ROOT = Path(__file__).resolve().parents[1]


def _codes(cls: type) -> list:
    return [name for name in vars(cls) if not name.startswith("_")]


@pytest.mark.parametrize("cls,letter", [(Errors, "E"), (Warnings, "W"), (ApplyErrors, "A")])
def test_every_message_is_named_by_its_code_and_prefixed_once(cls, letter):
    codes = _codes(cls)
    assert codes, cls
    for code in codes:
        assert re.fullmatch(letter + r"\d{3}", code), f"{cls.__name__}.{code} is not named like {letter}001"
        msg = getattr(cls, code)
        assert msg.startswith(f"[{code}] "), msg
        assert msg.count(f"[{code}]") == 1, msg
        assert not re.match(r"\[[A-Z]\d{3}\]", vars(cls)[code]), f"{code} states its own code: {vars(cls)[code]!r}"


def test_a_formatted_error_keeps_its_code_and_quotes_the_value():
    err = PaDeLLMError(Errors.E010.format(key="threads", value=-1, why="must be >= 0"))
    assert str(err) == "[E010] Invalid setting threads=-1: must be >= 0"
    assert isinstance(err, ValueError)
    assert Errors.__name__ == "Errors"  # dunders are not messages


def test_w001_formats_with_its_fields():
    with pytest.warns(UserWarning, match=r"^\[W001\] The adapter 'ad' was trained with template 'zh'; "
                                         r"using it instead of 'en'\.$"):
        warnings.warn(Warnings.W001.format(adapter="ad", trained="zh", configured="en"))


def test_every_train_config_field_has_an_argparse_type():
    """A new TrainConfig field must be added to cli.TRAIN_FLAG_TYPES (and a removed one taken out)."""
    settable = set(field_help())
    assert settable == {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
    assert set(TRAIN_FLAG_TYPES) == settable, (f"missing: {sorted(settable - set(TRAIN_FLAG_TYPES))}, "
                                               f"stale: {sorted(set(TRAIN_FLAG_TYPES) - settable)}")


def _scalar_default(name: str) -> bool:
    default = TrainConfig.__dataclass_fields__[name].default
    return default is not None and default is not dataclasses.MISSING


@pytest.mark.parametrize("name", sorted(n for n in TRAIN_FLAG_TYPES if _scalar_default(n)))
def test_every_train_flag_parses_its_own_default(name):
    """The map's type agrees with the field: the default, written on the command line, comes back as itself."""
    default = TrainConfig.__dataclass_fields__[name].default
    flag = "--" + name.replace("_", "-")
    value = getattr(build_parser().parse_args(["train", flag, str(default)]), name)
    assert value == default and type(value) is type(default)


# the fields without a scalar default (None, a list or a dict), each with a command-line value and its parse
NON_SCALAR_FLAGS = {"labels": ("PER,ORG", "PER,ORG"), "max_steps": ("5", 5),
                    "label_words": ("PER=person", "PER=person")}


def test_every_train_flag_without_a_scalar_default_parses():
    assert set(NON_SCALAR_FLAGS) == {n for n in TRAIN_FLAG_TYPES if not _scalar_default(n)}
    for name, (text, value) in NON_SCALAR_FLAGS.items():
        assert getattr(build_parser().parse_args(["train", "--" + name.replace("_", "-"), text]), name) == value


@pytest.mark.parametrize("text,value", [("false", False), ("0", False), ("No", False), ("true", True),
                                        ("on", True)])
def test_a_boolean_train_flag_parses(text, value):
    assert build_parser().parse_args(["train", "--final-eval", text]).final_eval is value


def test_a_boolean_train_flag_rejects_other_words(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--final-eval", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_project_yml_states_the_train_command_once():
    """Every train line in project.yml is the shared `train_command` plus --output/--format, and parses."""
    pytest.importorskip("weasel")
    from weasel.util import load_project_config

    raw = (ROOT / "project.yml").read_text(encoding="utf8")
    assert raw.count("spacy_padellm train") == 1
    lines = [line for command in load_project_config(ROOT)["commands"] for line in command["script"]
             if "spacy_padellm train" in line]
    assert len(lines) == 3
    parser = build_parser()
    outputs, formats = set(), set()
    for line in lines:
        args = parser.parse_args(shlex.split(line)[3:])  # after `python -m spacy_padellm`
        assert args.command == "train" and args.train and args.dev
        outputs.add(args.output)
        formats.add(args.format)
    assert len(outputs) == 3 and formats == {None, "autoreg_struct", "autoreg_aug"}
