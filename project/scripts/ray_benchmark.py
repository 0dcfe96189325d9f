"""Ray's overhead on `apply`: `--backend local` against `--backend ray` on the same documents and pipeline.

Runs `python -m spacy_padellm apply` as subprocesses, alternately local, ray, local, ray, ... (R runs each,
a fresh OUTPUT folder every run) and prints, per run: the process's wall time, apply's own total (its
summary, from the end of the input scan), the start-up (from the process's start until the first annotated
batch reached the writer: imports, loading the pipeline, and for Ray starting or joining Ray and starting
the actor) and the steady state (documents per second from the first batch to the last); then Ray's
overhead against local on each (mean of the runs): total time ray / local - 1, steady state local docs/s /
ray docs/s - 1. The process's wall time is the fair total: the local backend imports torch and spaCy
before apply's clock starts, while Ray's actor imports them inside it.

Ray, three ways:
  (default)        every ray run starts its own local Ray (`apply` without --address) and stops it;
  --start-head     the script runs `ray start --head --num-cpus N` before each ray run (not timed) and
                   stops it after, and apply joins it with --address auto: how a cluster user runs a job
                   (the cluster is up before it); local runs do not share the machine with it;
  --keep-head      as --start-head, but one head for all the runs (the local runs share the machine with
                   it, idle), so later ray jobs also find Ray Data's helper actors (detached) running, as
                   on a long-lived cluster;
  --address ADDR   a cluster you started yourself (the script neither starts nor stops it).

Without --input, the first N sentences of CoNLL-2003 dev (--conll) become a JSONL in --workdir; without
--pipeline, the default pipeline (spacy.blank("en") + padellm_ner) is saved there. Run it on an otherwise
idle machine: the numbers compare two backends competing for the same cores.

    python project/scripts/ray_benchmark.py -n 200 --repeats 2 --start-head --out ray_benchmark.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_share import CpuSampler  # noqa: E402 - this folder's sampler

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONLL = ROOT.parent / "shared" / "data" / "conll2003" / "dev.conll"
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")  # where `ray start` leaves the address for auto
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SPACY_PADELLM_CACHE")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default=None, help="pipeline folder (default: WORKDIR/pipeline, made if missing)")
    p.add_argument("--input", default=None, help="JSONL with id and text (default: WORKDIR/devN.jsonl from --conll)")
    p.add_argument("--conll", default=str(DEFAULT_CONLL), help="CoNLL file the default input is cut from")
    p.add_argument("-n", "--sentences", type=int, default=200, help="sentences of --conll (default: 200)")
    p.add_argument("--repeats", type=int, default=2, help="runs per backend (default: 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the local backend (default: 2)")
    p.add_argument("--actors", default="1")
    p.add_argument("--cpus-per-actor", default="2")
    p.add_argument("--address", default=None, help="a running Ray cluster to use (e.g. auto)")
    head = p.add_mutually_exclusive_group()
    head.add_argument("--start-head", action="store_true", help="ray start --head before each ray run, stop it after")
    head.add_argument("--keep-head", action="store_true", help="one ray start --head for all runs, stopped at the end")
    p.add_argument("--head-cpus", type=int, default=2, help="--num-cpus of the head the script starts (default: 2)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to wait after ray start (default: 5)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of every run and of the head the script starts (repeatable)")
    p.add_argument("--ray-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the ray runs only, and of the head (e.g. OMP_WAIT_POLICY=PASSIVE: "
                        "the actor's OpenMP threads sleep at once instead of spinning; repeatable)")
    p.add_argument("--workdir", default="/tmp/ray_benchmark")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run (default: 1800)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--keep-outputs", action="store_true", help="keep the annotated OUTPUT folders")
    p.add_argument("--cpu-share", action="store_true",
                   help="sample every process's CPU time (cpu_share.py) and report it per process group, "
                        "for the start-up and the steady state of each run (the sampler's own wakeups slow the "
                        "ray runs: time them without it, docs/RAY.md session 18)")
    return p.parse_args(argv)


# ---- inputs -----------------------------------------------------------------------------------------
def make_input(conll: str, n: int, path: Path) -> Path:
    """The first n sentences of a CoNLL file as JSONL: {"id": i, "text": the tokens joined by spaces}."""
    import spacy

    from spacy_padellm.training.readers import read_conll

    docs = read_conll(conll, spacy.blank("en").vocab)[:n]
    if len(docs) < n:
        raise SystemExit(f"{conll} has only {len(docs)} sentences, fewer than -n {n}")
    with open(path, "w", encoding="utf8") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({"id": i, "text": doc.text}) + "\n")
    return path


def make_pipeline(path: Path) -> Path:
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner")
    nlp.to_disk(path)
    return path


def prepare(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    pipeline = Path(args.pipeline) if args.pipeline else work / "pipeline"
    if not pipeline.exists():
        if args.pipeline:
            raise SystemExit(f"--pipeline {pipeline} does not exist")
        make_pipeline(pipeline)
    inp = Path(args.input) if args.input else work / f"dev{args.sentences}.jsonl"
    if not args.input and not inp.exists():
        make_input(args.conll, args.sentences, inp)
    with open(inp, encoding="utf8") as f:
        docs = sum(1 for line in f if line.strip())
    return {"pipeline": str(pipeline), "input": str(inp), "documents": docs}


# ---- runs -------------------------------------------------------------------------------------------
def run_env(args: argparse.Namespace, backend: str) -> Dict[str, str]:
    """This process's environment plus --env (and --ray-env for ray). The actors inherit it: a Ray that
    apply starts, or the head this script starts, passes its environment on to its workers."""
    env = dict(os.environ)
    for item in args.env + (args.ray_env if backend == "ray" else []):
        key, _, value = item.partition("=")
        env[key] = value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Head:
    """A Ray head this script starts (`ray start --head --block`) and stops by its own process: SIGTERM to
    that command stops the processes it started, and no other Ray on the machine (`ray stop` would stop
    every Ray of this user)."""

    def __init__(self, args: argparse.Namespace, env: Dict[str, str]) -> None:
        ray = Path(sys.executable).with_name("ray")
        cmd = [str(ray) if ray.exists() else "ray", "start", "--head", "--block", "--num-cpus",
               str(args.head_cpus), "--include-dashboard=false", "--disable-usage-stats"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in self.proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "block forever" in line:  # printed once the head is up
                break
        else:
            raise SystemExit("ray start --head failed:\n" + "".join(lines[-40:]))
        self.current = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.exists() else None
        time.sleep(args.settle)  # the head's own processes finish starting before a clock runs

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # ray start wrote the head's address here for `--address auto`; ray stop would remove it
        if self.current is not None and CURRENT_CLUSTER.exists() and CURRENT_CLUSTER.read_text() == self.current:
            CURRENT_CLUSTER.unlink()


def apply_cmd(args: argparse.Namespace, data: Dict[str, Any], backend: str, out: Path, summary: Path) -> List[str]:
    cmd = [sys.executable, "-m", "spacy_padellm", "apply", data["pipeline"], data["input"], str(out),
           "--backend", backend, "--batch-size", str(args.batch_size), "--summary-json", str(summary)]
    if backend == "local":
        return cmd + ["--threads", str(args.threads)]
    cmd += ["--actors", args.actors, "--cpus-per-actor", args.cpus_per_actor]
    address = "auto" if (args.start_head or args.keep_head) else args.address
    return cmd + (["--address", address] if address else [])


def one_run(args: argparse.Namespace, data: Dict[str, Any], backend: str, run: int, work: Path) -> Dict[str, Any]:
    env = run_env(args, backend)
    out, summary = work / f"out-{backend}-{run}", work / f"summary-{backend}-{run}.json"
    shutil.rmtree(out, ignore_errors=True)
    summary.unlink(missing_ok=True)
    head = Head(args, env) if backend == "ray" and args.start_head else None
    load = os.getloadavg()[0]
    sampler = CpuSampler().start() if args.cpu_share else None
    try:
        began = time.time()
        done = subprocess.run(apply_cmd(args, data, backend, out, summary), env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=args.timeout)
        wall = time.time() - began
    finally:
        if sampler is not None:
            sampler.stop()
        if head is not None:
            head.stop()
    if done.returncode != 0 or not summary.exists():
        raise SystemExit(f"{backend} run {run} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-6000:]}")
    s = json.loads(summary.read_text(encoding="utf8"))
    if s["documents"] != data["documents"] or s["missing"]:
        raise SystemExit(f"{backend} run {run} wrote {s['documents']} of {data['documents']} documents")
    first = s.get("first_batch_unix")
    row = {"backend": backend, "run": run, "process_s": round(wall, 2), "apply_s": round(s["seconds"], 2),
           "startup_s": None if first is None else round(first - began, 2),
           "startup_apply_s": s.get("startup_seconds"), "steady_docs_per_s": s.get("steady_docs_per_s"),
           "steady_documents": s.get("steady_documents"), "batches": s.get("batches"),
           "phases": s.get("phases"), "load_before": round(load, 2), "summary_line": done.stdout.strip()[-400:]}
    if sampler is not None and first is not None:
        last = s.get("last_batch_unix") or first
        row["cpu_startup_s"] = sampler.share(began, first)
        row["cpu_steady_s"] = sampler.share(first, last)
        row["steady_window_s"] = round(last - first, 2)
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return row


# ---- report -----------------------------------------------------------------------------------------
def overheads(rows: List[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Ray against local, from the means of the runs: time ratios - 1; steady: local rate / ray rate - 1."""
    def avg(backend: str, key: str) -> Optional[float]:
        values = [r[key] for r in rows if r["backend"] == backend and r[key] is not None]
        return mean(values) if values else None

    out: Dict[str, Optional[float]] = {}
    for key in ("process_s", "apply_s", "startup_s"):
        lo, ra = avg("local", key), avg("ray", key)
        out[f"{key}_local"], out[f"{key}_ray"] = lo, ra
        out[f"overhead_{key}"] = None if not lo or ra is None else round(ra / lo - 1, 4)
    lo, ra = avg("local", "steady_docs_per_s"), avg("ray", "steady_docs_per_s")
    out["steady_docs_per_s_local"], out["steady_docs_per_s_ray"] = lo, ra
    out["overhead_steady"] = None if not lo or not ra else round(lo / ra - 1, 4)
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(rows: List[Dict[str, Any]], over: Dict[str, Optional[float]]) -> None:
    print("| backend | run | process s | apply s | start-up s | steady docs/s | load before |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['backend']} | {r['run']} | {_fmt(r['process_s'])} | {_fmt(r['apply_s'])} | "
              f"{_fmt(r['startup_s'])} | {_fmt(r['steady_docs_per_s'], 2)} | {_fmt(r['load_before'], 2)} |")
    pct = lambda v: "-" if v is None else f"{100 * v:+.1f}%"  # noqa: E731
    print(f"\nRay's overhead (mean of runs): total {pct(over['overhead_process_s'])} (process wall), "
          f"{pct(over['overhead_apply_s'])} (apply's own clock); start-up "
          f"{_fmt(over['startup_s_ray'])} s vs {_fmt(over['startup_s_local'])} s; steady state "
          f"{pct(over['overhead_steady'])} ({_fmt(over['steady_docs_per_s_ray'], 2)} vs "
          f"{_fmt(over['steady_docs_per_s_local'], 2)} docs/s)")


def print_cpu_share(rows: List[Dict[str, Any]]) -> None:
    """Per run: each process group's CPU-seconds in the start-up and the steady state, and its share of
    the cores over the steady window."""
    cores = len(os.sched_getaffinity(0))
    for r in rows:
        if "cpu_steady_s" not in r:
            continue
        window = r["steady_window_s"] or 0.0
        print(f"\nCPU-seconds, {r['backend']} run {r['run']} (start-up {_fmt(r['startup_s'])} s, steady "
              f"{window:.1f} s on {cores} cores = {cores * window:.1f} CPU-s):")
        print("| process group | start-up CPU-s | steady CPU-s | steady share of the cores |")
        print("| --- | ---: | ---: | ---: |")
        names = list(dict.fromkeys([*r["cpu_steady_s"], *r["cpu_startup_s"]]))
        for name in names:
            st, up = r["cpu_steady_s"].get(name, 0.0), r["cpu_startup_s"].get(name, 0.0)
            pct = f"{100 * st / (cores * window):.1f}%" if window else "-"
            print(f"| {name} | {up:.2f} | {st:.2f} | {pct} |")


def machine() -> Dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    info: Dict[str, Any] = {"cpu": model, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}
    for mod in ("ray", "torch", "spacy"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir)
    data = prepare(args, work)
    if os.getloadavg()[0] > 0.5:
        print(f"warning: load average {os.getloadavg()[0]:.2f}; the numbers need an otherwise idle machine",
              file=sys.stderr)
    rows: List[Dict[str, Any]] = []
    head = Head(args, run_env(args, "ray")) if args.keep_head else None
    try:
        for run in range(1, args.repeats + 1):
            for backend in ("local", "ray"):
                rows.append(one_run(args, data, backend, run, work))
                r = rows[-1]
                print(f"{backend} run {run}: {r['process_s']:.1f} s ({r['summary_line'].splitlines()[-1]})",
                      file=sys.stderr, flush=True)
    finally:
        if head is not None:
            head.stop()
    over = overheads(rows)
    print_table(rows, over)
    print_cpu_share(rows)
    mode = ("start-head" if args.start_head else "keep-head" if args.keep_head else
            f"address {args.address}" if args.address else "local Ray per run")
    env = {b: {k: run_env(args, b).get(k) for k in ENV_KEYS} for b in ("local", "ray")}
    result = {"config": {**vars(args), **data, "ray_mode": mode}, "machine": machine(), "env": env,
              "runs": rows, "overhead": over}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf8")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
