"""Packaging: the displaCy colour entry point and the contents of the project's wheel.

Fast checks only; the full proof (a `spacy package` wheel installed into a fresh venv and loaded) is
scripts/check_package.sh.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import spacy
from spacy import displacy
from spacy.tokens import Doc

from spacy_padellm.displacy_colors import COLORS

ROOT = Path(__file__).resolve().parents[1]
HEX = re.compile(r"^#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?$")
# one <mark> per entity: (background, text, label)
MARK = re.compile(r'<mark class="entity" style="background: ([^;]+);[^"]*">\s*(.*?)\s*<span[^>]*>(\w+)</span>',
                  re.S)


def _render(ents, options=None):
    nlp = spacy.blank("en")
    words = ["Angela", "Merkel", "visited", "Siemens", "in", "Berlin", "for", "the", "Euro", "2024", "."]
    doc = Doc(nlp.vocab, words=words, ents=ents)
    html = displacy.render(doc, style="ent", jupyter=False, options=options or {})
    return {(text, label): bg for bg, text, label in MARK.findall(html)}


ENTS = ["B-PER", "I-PER", "O", "B-ORG", "O", "B-LOC", "O", "O", "B-MISC", "I-MISC", "O"]


def test_colors_cover_the_default_adapter_labels():
    labels = json.loads((ROOT / "spacy_padellm" / "default_adapter" / "padellm.json").read_text())["labels"]
    assert set(labels) <= set(COLORS)
    assert all(HEX.match(color) for color in COLORS.values())
    assert len(set(COLORS.values())) == len(COLORS), "labels share a colour"
    from spacy.displacy.render import DEFAULT_ENTITY_COLOR

    assert DEFAULT_ENTITY_COLOR not in COLORS.values()


def test_entry_point_is_registered():
    eps = {ep.name: ep for ep in entry_points(group="spacy_displacy_colors")}
    assert "spacy_padellm" in eps, "reinstall: pip install --no-build-isolation --no-deps -e ."
    assert eps["spacy_padellm"].value == "spacy_padellm.displacy_colors:COLORS"
    assert eps["spacy_padellm"].load() is COLORS
    assert spacy.util.registry.displacy_colors.get_all()["spacy_padellm"] == COLORS


def test_displacy_renders_our_colours():
    marks = _render(ENTS)
    assert marks[("Angela Merkel", "PER")] == COLORS["PER"]
    assert marks[("Euro 2024", "MISC")] == COLORS["MISC"]
    assert marks[("Siemens", "ORG")] == COLORS["ORG"]
    assert marks[("Berlin", "LOC")] == COLORS["LOC"]
    # PER and MISC were spaCy's grey fallback before the entry point
    from spacy.displacy.render import DEFAULT_ENTITY_COLOR

    assert DEFAULT_ENTITY_COLOR not in marks.values()


def test_explicit_colours_still_win():
    marks = _render(ENTS, options={"colors": {"PER": "#123456"}})
    assert marks[("Angela Merkel", "PER")] == "#123456"
    assert marks[("Euro 2024", "MISC")] == COLORS["MISC"]


def _source_copy(dest: Path) -> Path:
    """The checkout without build outputs, so a stale build/lib cannot put files in (or hide them from)
    the wheel. tests/ is copied on purpose: the wheel must leave it out."""
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                  ".pytest_cache", ".hypothesis", "training_runs", "out")
    shutil.copytree(ROOT, dest, ignore=skip, symlinks=True)
    return dest


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    src = _source_copy(tmp_path / "src")
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out)], cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("spacy_padellm-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
        ep_file = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_text = zf.read(ep_file).decode()
    for needed in ("spacy_padellm/__init__.py", "spacy_padellm/py.typed", "spacy_padellm/displacy_colors.py",
                   "spacy_padellm/default_adapter/adapter_model.safetensors",
                   "spacy_padellm/default_adapter/adapter_config.json",
                   "spacy_padellm/default_adapter/padellm.json",
                   "spacy_padellm/engine/decoder.py", "spacy_padellm/training/loop.py"):
        assert needed in names, needed
    for adapter in ("autoreg_aug", "autoreg_struct"):
        assert f"spacy_padellm/baseline_adapters/{adapter}/adapter_model.safetensors" in names
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n or n.startswith("test_")]
    assert not [n for n in names if "shared" in n.split("/")]
    assert all(n.startswith(("spacy_padellm/", "spacy_padellm-")) for n in names), sorted(names)
    assert "[spacy_displacy_colors]" in entry_text
    assert "spacy_padellm = spacy_padellm.displacy_colors:COLORS" in entry_text
    assert "padellm_ner = spacy_padellm.component:make_padellm_ner" in entry_text
