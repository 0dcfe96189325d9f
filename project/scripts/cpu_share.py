"""Where a job's CPU time goes, per process: a sampler of /proc for `ray_benchmark.py --cpu-share`.

On a 2-core machine every CPU-second that Ray's own processes (the driver's executor loop, raylet, the GCS,
agents, helper actors, idle workers) use while the actor decodes is taken from the actor's two torch
threads. The sampler reads every process's user+system ticks (`/proc/PID/stat`) every `interval` seconds
from a thread of the benchmark process, and `share(since, until)` gives each process group's CPU-seconds
in a window (the start-up, or the steady state from the first annotated batch to the last). Processes that
start or end inside a window count from their first or to their last sample; a process that lives less than
one interval is missed (a few tenths of a second at most each).
"""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# process group name from the command line: the first pattern that matches (Ray names its workers
# `ray::ClassName` or `ray::IDLE` in their title)
GROUPS: List[Tuple[str, str]] = [
    (r"ray::MapWorker|ray::_MapWorker|PipelineAnnotator", "actor (MapWorker)"),
    (r"ray::IDLE", "idle workers (ray::IDLE)"),
    (r"ray::_StatsActor", "Ray Data _StatsActor"),
    (r"ray::AutoscalingRequester|autoscaling_requester", "Ray Data AutoscalingRequester"),
    (r"ray::", "other Ray actors/tasks"),
    (r"default_worker\.py", "workers starting (default_worker.py)"),
    (r"raylet/raylet", "raylet"),
    (r"gcs_server", "gcs_server"),
    (r"dashboard/agent\.py|dashboard_agent", "dashboard agent"),
    (r"runtime_env/agent|runtime_env_agent", "runtime-env agent"),
    (r"log_monitor", "log monitor"),
    (r"dashboard\.py|dashboard/dashboard", "dashboard"),
    (r"monitor\.py|autoscaler", "autoscaler monitor"),
    (r"spacy_padellm apply", "apply driver"),
]


THREADED = ("actor (MapWorker)", "apply driver")  # groups whose threads are reported one by one


def group_of(cmdline: str) -> str:
    for pattern, name in GROUPS:
        if re.search(pattern, cmdline):
            return name
    return "other processes"


def _ticks(pid: str) -> Optional[int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is fields[0]
    return int(fields[11]) + int(fields[12])  # utime, stime


def _comm(path: str) -> str:
    try:
        return Path(f"/proc/{path}/comm").read_text().strip()
    except OSError:
        return "?"


def _cmdline(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf8", "replace").strip()


class CpuSampler:
    """Samples every process's CPU ticks in a background thread, from `start()` to `stop()`."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: List[Tuple[float, Dict[str, int]]] = []  # (unix time, {pid: ticks})
        self.names: Dict[str, str] = {}  # pid -> group (the last command line seen: a title may change)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._me = str(os.getpid())

    def start(self) -> "CpuSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            now, ticks = time.time(), {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or entry == self._me:
                    continue
                t = _ticks(entry)
                if t is None:
                    continue
                ticks[entry] = t
                # every sample: a worker renames itself (ray::IDLE, then ray::MapWorker(...)) after it starts
                cmdline = _cmdline(entry)
                if not cmdline and entry in self.names:  # exiting: keep the name it had
                    continue
                name = self.names[entry] = group_of(cmdline)
                if name in THREADED:  # its threads too, under "group / thread name"
                    for task in os.listdir(f"/proc/{entry}/task") if os.path.isdir(f"/proc/{entry}/task") else ():
                        tt = _ticks(f"{entry}/task/{task}")
                        if tt is not None:
                            key = f"{entry}/{task}"
                            ticks[key] = tt
                            self.names[key] = f"{name} / {_comm(f'{entry}/task/{task}')}"
            self.samples.append((now, ticks))
            self._stop.wait(self.interval)

    def share(self, since: float, until: float) -> Dict[str, float]:
        """CPU-seconds per process group between the samples nearest to `since` and `until` (Unix times)."""
        inside = [(t, s) for t, s in self.samples if since - self.interval <= t <= until + self.interval]
        if len(inside) < 2:
            return {}
        first: Dict[str, int] = {}
        last: Dict[str, int] = {}
        for _, ticks in inside:
            for pid, value in ticks.items():
                if pid not in first:
                    # a process already running at the window's start counts from there; one that starts
                    # inside it counts from zero (its ticks before the first sample are its own start)
                    first[pid] = value if pid in inside[0][1] else 0
                last[pid] = value
        out: Dict[str, float] = {}
        for pid, value in last.items():
            name = self.names.get(pid, "other processes")  # threads: "group / thread name", summed by name
            out[name] = out.get(name, 0.0) + (value - first[pid]) / TICK
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}
