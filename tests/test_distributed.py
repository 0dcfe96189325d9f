"""`apply` and `spacy_padellm.distributed`: the local backend as the reference, Ray Data actors on small
local clusters (2 logical CPUs at most, shut down after every test), failures and resume."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import spacy

from spacy_padellm.apply import ApplyErrors, Options, add_apply_parser, options_from_args, run
from spacy_padellm.distributed import (HOOK_BLOCK_ERROR, HOOK_DOC_ERROR, HOOK_KILL_ONCE, HOOK_SLEEP, KILL_TEXT)
from spacy_padellm.errors import PaDeLLMError

LABELS = ["PER", "ORG", "LOC", "MISC"]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipeline(tiny_llama, tmp_path_factory) -> str:
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, "dtype": "float32", "device": "cpu",
                                        "max_new_tokens": 3, "threads": 1,
                                        # the fixed rule for the extras: pass counts and scores reproducible
                                        # to the bit between processes, which `same` compares (the measured
                                        # choice follows each process's timing)
                                        "small_batch": 4})
    path = tmp_path_factory.mktemp("apply") / "pipeline"
    nlp.to_disk(path)
    return str(path)


def write_corpus(path: Path, n: int, extra: dict | None = None, **kw) -> Path:
    extra = extra or {}
    with open(path, "w", encoding="utf8") as f:
        for i in range(n):
            text = extra.get(i, f"Ada Lovelace met Charles Babbage in London on day {i}.")
            f.write(json.dumps({"id": f"doc-{i}", "text": text, "source": f"s{i % 3}", **kw}) + "\n")
    return path


def read_out(folder: Path) -> list:
    import pyarrow.parquet as pq

    rows = []
    for shard in sorted(folder.glob("*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    return rows


def by_id(rows: list) -> dict:
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r for r in rows}


def same(a: dict, b: dict) -> None:
    """Equal rows; scores to 1e-4 (batches of other sizes pad differently)."""
    assert a.keys() == b.keys()
    for key in a:
        ra, rb = a[key], b[key]
        for col in ("ents", "spans"):
            assert [(s["start_char"], s["end_char"], s["label"], s["text"]) for s in ra[col]] == \
                   [(s["start_char"], s["end_char"], s["label"], s["text"]) for s in rb[col]], (key, col)
            for x, y in zip(ra[col], rb[col]):
                assert (x["score"] is None) == (y["score"] is None)
                if x["score"] is not None:
                    assert abs(x["score"] - y["score"]) < 1e-4
        assert ra["forward_passes"] == rb["forward_passes"] and ra["error"] == rb["error"], key
        assert ra.get("source") == rb.get("source")


def opts(pipeline, inp, out, **kw) -> Options:
    base = dict(pipeline=pipeline, input=str(inp), output=str(out), batch_size=4, threads=1,
                keep_columns=("source",))
    base.update(kw)
    return Options(**base)


@pytest.fixture()
def ray_env():
    """Starts a local 2-CPU Ray with the given env vars for its workers; shuts it down after the test."""
    import ray

    def start(**env):  # "local": a new instance, never a cluster some `ray start` on this machine left behind
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {**ENV, **env}})

    yield start
    ray.shutdown()


# ---- no Ray unless asked --------------------------------------------------------------------------
def test_ray_stays_optional(tiny_llama):
    code = ("import sys, spacy, spacy_padellm, spacy_padellm.apply, spacy_padellm.distributed\n"
            "nlp = spacy.blank('en')\n"
            f"nlp.add_pipe('padellm_ner', config={{'model': {tiny_llama!r}, 'labels': ['PER'], 'device': 'cpu'}})\n"
            "nlp('Ada met Bob.')\n"
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **ENV}, timeout=300)


def test_the_ray_driver_loads_neither_spacy_nor_torch():
    """The `apply --backend ray` driver's modules and its command line import neither spaCy nor torch (the
    actors load them; the driver's imports would take the cores they start on), and the component's names
    still import from the package, on first use."""
    code = ("import sys\n"
            "from spacy_padellm.cli import build_parser\n"
            "import spacy_padellm.apply, spacy_padellm.apply_ray, spacy_padellm.distributed\n"
            "build_parser().parse_args(['apply', 'p', 'in.jsonl', 'out', '--backend', 'ray'])\n"
            "heavy = [m for m in ('spacy', 'torch', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from spacy_padellm import PaDeLLMNER, DEFAULT_CONFIG\n"  # still importable, on first use
            "assert 'spacy' in sys.modules and DEFAULT_CONFIG\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_add_apply_parser():
    parser = argparse.ArgumentParser()
    add_apply_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["apply", "P", "in.jsonl", "out", "--backend", "ray", "--address", "auto",
                              "--actors", "1,4", "--cpus-per-actor", "2", "--max-errored-blocks", "3",
                              "--keep-columns", "a,b", "--text-key", "body", "--id-key", "key", "--batch-size", "8"])
    o = options_from_args(args)
    assert (o.backend, o.address, o.actors, o.cpus_per_actor, o.max_errored_blocks) == ("ray", "auto", (1, 4), 2, 3)
    assert (o.keep_columns, o.text_key, o.id_key, o.batch_size) == (("a", "b"), "body", "key", 8)
    assert args.func.__name__ == "apply_command"
    with pytest.raises(SystemExit):
        parser.parse_args(["apply", "P", "I", "O", "--actors", "3,1"])


# ---- bad input ------------------------------------------------------------------------------------
def test_bad_input_messages(pipeline, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": "broken"\n', encoding="utf8")
    with pytest.raises(PaDeLLMError, match=r"\[A001\] .*bad.jsonl:2"):
        run(opts(pipeline, bad, tmp_path / "o1", keep_columns=()))
    bad.write_text('{"id": 1, "body": "no text"}\n', encoding="utf8")
    with pytest.raises(PaDeLLMError, match=r"\[A002\] .*bad.jsonl:1: no 'text' field"):
        run(opts(pipeline, bad, tmp_path / "o2", keep_columns=()))
    bad.write_text('{"id": 1, "text": "ok"}\n{"id": 7, "text": 42}\n', encoding="utf8")
    with pytest.raises(PaDeLLMError, match=r"\[A003\] .*bad.jsonl:2: the text of id 7 is int"):
        run(opts(pipeline, bad, tmp_path / "o3", keep_columns=()))
    bad.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', encoding="utf8")
    with pytest.raises(PaDeLLMError, match=r"\[A005\] .*bad.jsonl:2: the id '1' was already used at .*bad.jsonl:1"):
        run(opts(pipeline, bad, tmp_path / "o4", keep_columns=()))

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1], "text": [3]}), tmp_path / "bad.parquet")
    with pytest.raises(PaDeLLMError, match=r"\[A006\] .*bad.parquet: the column 'text' has type int64"):
        run(opts(pipeline, tmp_path / "bad.parquet", tmp_path / "o5", keep_columns=()))
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(pa.table({"id": ["x"], "label": ["y"]}), other / "part-old.parquet")
    good = write_corpus(tmp_path / "good.jsonl", 2)
    with pytest.raises(PaDeLLMError, match=r"\[A009\] .*part-old.parquet.*another schema"):
        run(opts(pipeline, good, other))


# ---- local backend: errors, failed blocks, resume --------------------------------------------------
def test_local_error_column_and_errored_blocks(pipeline, tmp_path, monkeypatch):
    inp = write_corpus(tmp_path / "in.jsonl", 10, {3: "This one @@docfail@@ raises.", 8: "This @@blockfail@@ batch."})
    monkeypatch.setenv(HOOK_DOC_ERROR, "@@docfail@@")
    monkeypatch.setenv(HOOK_BLOCK_ERROR, "@@blockfail@@")
    with pytest.raises(PaDeLLMError, match=r"\[A011\]"):
        run(opts(pipeline, inp, tmp_path / "out"))  # --max-errored-blocks 0: the failed block aborts
    summary = run(opts(pipeline, inp, tmp_path / "out", max_errored_blocks=1))
    rows = by_id(read_out(tmp_path / "out"))
    assert set(rows) == {f"doc-{i}" for i in range(8)}  # docs 8-9 (the failed block) are not written
    assert summary.missing == 2 and "NOT written" in summary.line()
    assert rows["doc-3"]["error"].startswith("RuntimeError: test hook") and rows["doc-3"]["ents"] == []
    assert all(r["error"] is None for k, r in rows.items() if k != "doc-3")
    monkeypatch.delenv(HOOK_BLOCK_ERROR)
    summary = run(opts(pipeline, inp, tmp_path / "out"))  # resume: only the missing block
    assert (summary.documents, summary.skipped, summary.missing) == (2, 8, 0)
    assert set(by_id(read_out(tmp_path / "out"))) == {f"doc-{i}" for i in range(10)}


def test_resume_after_killed_apply(pipeline, tmp_path):
    inp = write_corpus(tmp_path / "in.jsonl", 24)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "spacy_padellm.apply", pipeline, str(inp), str(out), "--batch-size", "2",
           "--threads", "1"]
    proc = subprocess.Popen(cmd, env={**os.environ, **ENV, HOOK_SLEEP: "0.4"}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while len(list(out.glob("part-*.parquet"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = read_out(out)
    assert 3 <= len(by_id(first)) < 24
    done = subprocess.run(cmd, env={**os.environ, **ENV}, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(first)} already done" in done.stdout
    assert set(by_id(read_out(out))) == {f"doc-{i}" for i in range(24)}
    assert not list(out.glob(".tmp-*"))


def test_summary_times_start_up_and_steady_state(pipeline, tmp_path):
    inp = write_corpus(tmp_path / "in.jsonl", 6)
    parser = argparse.ArgumentParser()
    add_apply_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["apply", pipeline, str(inp), str(tmp_path / "out"), "--batch-size", "2",
                              "--threads", "1", "--summary-json", str(tmp_path / "summary.json")])
    assert args.func(args) == 0
    s = json.loads((tmp_path / "summary.json").read_text(encoding="utf8"))
    assert (s["documents"], s["batches"], s["steady_documents"], s["backend"]) == (6, 3, 4, "local")
    assert 0 < s["startup_seconds"] <= s["seconds"] and s["steady_docs_per_s"] > 0
    assert s["started_unix"] < s["first_batch_unix"] <= s["last_batch_unix"]
    assert "load pipeline" in s["phases"]
    one = run(opts(pipeline, write_corpus(tmp_path / "one.jsonl", 2), tmp_path / "one", batch_size=8))
    assert one.batches == 1 and one.steady_docs_per_s is None and "then" not in one.line()  # no steady state


def test_spacy_format_and_resume(pipeline, tmp_path):
    from spacy.tokens import DocBin

    inp = write_corpus(tmp_path / "in.jsonl", 6)
    summary = run(opts(pipeline, inp, tmp_path / "out.spacy"))
    assert summary.documents == 6
    docs = [d for p in sorted((tmp_path / "out.spacy").glob("*.spacy"))
            for d in DocBin().from_disk(p).get_docs(spacy.blank("en").vocab)]
    assert sorted(d.user_data["id"] for d in docs) == sorted(f"doc-{i}" for i in range(6))
    assert all("padellm" in d.spans for d in docs)
    assert run(opts(pipeline, inp, tmp_path / "out.spacy")).skipped == 6


# ---- Ray --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_equals_local(pipeline, tmp_path, ray_env):
    inp = write_corpus(tmp_path / "in.jsonl", 34, {5: "Fails @@docfail@@ here."})
    ray_env(**{HOOK_DOC_ERROR: "@@docfail@@"})
    os.environ[HOOK_DOC_ERROR] = "@@docfail@@"
    try:
        local = run(opts(pipeline, inp, tmp_path / "local"))
    finally:
        del os.environ[HOOK_DOC_ERROR]
    remote = run(opts(pipeline, inp, tmp_path / "ray", backend="ray", actors=2, cpus_per_actor=0.5))
    assert (local.documents, remote.documents, remote.missing, remote.errors) == (34, 34, 0, 1)
    assert remote.startup_seconds is not None and remote.steady_docs_per_s and "import ray" in remote.phases
    a, b = by_id(read_out(tmp_path / "local")), by_id(read_out(tmp_path / "ray"))
    assert len(b) == 34
    same(a, b)
    assert b["doc-5"]["error"].startswith("RuntimeError: test hook")


@pytest.mark.slow
def test_ray_actor_killed_once(pipeline, tmp_path, ray_env):
    marker = tmp_path / "killed"
    inp = write_corpus(tmp_path / "in.jsonl", 16, {6: f"This batch {KILL_TEXT} kills its actor."})
    ray_env(**{HOOK_KILL_ONCE: str(marker)})
    # The actor takes both CPUs of the cluster: a read task that asked for a CPU would wait for ever
    summary = run(opts(pipeline, inp, tmp_path / "out", backend="ray", actors=1, cpus_per_actor=2))
    assert marker.exists()  # the actor did die
    assert (summary.documents, summary.missing) == (16, 0)
    assert set(by_id(read_out(tmp_path / "out"))) == {f"doc-{i}" for i in range(16)}


@pytest.mark.slow
def test_ray_max_errored_blocks(pipeline, tmp_path, ray_env):
    inp = write_corpus(tmp_path / "in.jsonl", 12, {5: "The @@blockfail@@ batch."})
    ray_env(**{HOOK_BLOCK_ERROR: "@@blockfail@@"})
    with pytest.raises(PaDeLLMError, match=r"\[A011\]"):
        run(opts(pipeline, inp, tmp_path / "out", backend="ray", actors=1, cpus_per_actor=1))
    import ray

    ray.shutdown()  # the aborted dataset's actor may outlive it and hold the CPU the next run needs
    ray_env(**{HOOK_BLOCK_ERROR: "@@blockfail@@"})
    summary = run(opts(pipeline, inp, tmp_path / "out", backend="ray", actors=1, cpus_per_actor=1,
                       max_errored_blocks=1))
    rows = by_id(read_out(tmp_path / "out"))
    assert "doc-5" not in rows and summary.missing >= 1 and len(rows) + summary.missing == 12


@pytest.mark.slow
def test_ray_node_removed_mid_job(pipeline, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, runtime_env={"env_vars": {**ENV, HOOK_SLEEP: "0.3"}})
        cluster.wait_for_nodes()
        inp = write_corpus(tmp_path / "in.jsonl", 40)
        out = tmp_path / "out"
        removed = threading.Event()

        def remove_when_started():
            deadline = time.time() + 240
            while len(list(out.glob("part-*.parquet"))) < 2 and time.time() < deadline:
                time.sleep(0.05)
            cluster.remove_node(worker)
            removed.set()

        killer = threading.Thread(target=remove_when_started, daemon=True)
        killer.start()
        summary = run(opts(pipeline, inp, out, backend="ray", actors=2, cpus_per_actor=0.5, batch_size=2))
        killer.join(timeout=60)
        assert removed.is_set()
        assert (summary.documents, summary.missing) == (40, 0)
        assert set(by_id(read_out(out))) == {f"doc-{i}" for i in range(40)}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_real_model_ray_equals_nlp_pipe(tmp_path, ray_env):
    from spacy_padellm.distributed import doc_annotations

    nlp = spacy.blank("en")
    # the fixed rule for the extras: `same` compares pass counts, which the measured choice takes from
    # each process's own timing
    nlp.add_pipe("padellm_ner", config={"threads": 1, "small_batch": 4})
    nlp.to_disk(tmp_path / "pipeline")
    texts = ["Angela Merkel met Emmanuel Macron in Paris.", "Shares of Toyota rose in Tokyo on Monday.",
             "The United Nations held a meeting in Geneva."]
    with open(tmp_path / "in.jsonl", "w", encoding="utf8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
    expected = {str(i): doc_annotations(doc, "padellm") for i, doc in enumerate(nlp.pipe(texts))}
    assert any(e["ents"] for e in expected.values())
    ray_env()
    summary = run(Options(pipeline=str(tmp_path / "pipeline"), input=str(tmp_path / "in.jsonl"),
                          output=str(tmp_path / "out"), backend="ray", actors=1, cpus_per_actor=1, batch_size=8))
    assert summary.documents == 3
    got = by_id(read_out(tmp_path / "out"))
    same({k: {**v, "error": None} for k, v in expected.items()}, got)


def test_small_jobs_are_cut_evenly_over_several_actors():
    """Ray tasks are whole batches: a job of few batches on several actors gets smaller batches, so no actor
    idles while another does the last one; one actor or a large job keeps --batch-size (and so the local
    backend's batches)."""
    from spacy_padellm.apply_ray import TASKS_PER_ACTOR, task_rows

    assert task_rows(200, 32, 2) == 25  # 8 tasks of 25, not 7 of ~29 (4 against 3 on two actors)
    assert -(-200 // task_rows(200, 32, 2)) == TASKS_PER_ACTOR * 2
    assert task_rows(200, 32, 1) == 32 and task_rows(3, 8, 1) == 8
    assert task_rows(1_000_000, 32, 8) == 32 and task_rows(34, 4, 2) == 4
    assert task_rows(5, 32, 2) == 1  # fewer documents than tasks: one each


def test_annotator_loads_and_decodes_on_one_thread(pipeline, monkeypatch):
    """Ray Data builds the UDF on the actor's main thread and calls it on another; the weights' load and
    every batch must still share one thread, or libgomp runs two OpenMP teams and its threads stop spinning
    (docs/RAY.md, session 12)."""
    import pyarrow as pa

    import spacy_padellm.distributed as dist

    seen = {}
    load, annotate = dist.load_pipeline, dist.annotate_table
    monkeypatch.setattr(dist, "load_pipeline", lambda *a, **k: (seen.setdefault("load", threading.get_ident()),
                                                                 load(*a, **k))[1])
    monkeypatch.setattr(dist, "annotate_table", lambda *a, **k: (seen.setdefault("call", threading.get_ident()),
                                                                  annotate(*a, **k))[1])
    annotator = dist.PipelineAnnotator(pipeline, threads=1, batch_size=4)
    batch = pa.table({"id": ["a", "b"], "text": ["Ada Lovelace met Charles Babbage.", "Paris is big."]})
    out = {}
    caller = threading.Thread(target=lambda: out.setdefault("table", annotator(batch)))
    caller.start()
    caller.join()
    assert out["table"].num_rows == 2 and out["table"].column("error").null_count == 2
    assert seen["load"] == seen["call"]
    assert seen["load"] not in (threading.main_thread().ident, caller.ident)
