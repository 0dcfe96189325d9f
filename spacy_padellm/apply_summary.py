"""`apply`'s timing and summary: the total time, the start-up (until the first annotated batch reached the
writer: it holds loading the pipeline, and for Ray starting Ray, the readers and the actors) and the steady
state (documents per second from the first batch to the last), so the two backends can be compared on
both (project/scripts/ray_benchmark.py)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional


class BatchClock:
    """Started when the work starts; `batch(rows)` as each annotated batch arrives (before it is written)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.start_unix = time.time()  # the same instant on the wall clock (for a caller timing the process)
        self.first: Optional[float] = None  # perf_counter of the first batch
        self.last: Optional[float] = None
        self.first_rows = 0
        self.rows = 0
        self.batches = 0
        self.phases: Dict[str, float] = {}  # named start-up steps, seconds (e.g. "ray.init")

    def batch(self, rows: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first, self.first_rows = now, rows
        self.last = now
        self.rows += rows
        self.batches += 1

    def phase(self, name: str, since: float) -> float:
        """Records the seconds from `since` (a perf_counter) to now as start-up step `name`; returns now."""
        now = time.perf_counter()
        self.phases[name] = round(now - since, 3)
        return now

    def unix(self, at: Optional[float]) -> Optional[float]:
        """A perf_counter reading of this clock as a Unix time (None stays None)."""
        return None if at is None else round(self.start_unix + (at - self.start), 3)

    @property
    def startup(self) -> Optional[float]:
        return None if self.first is None else self.first - self.start

    @property
    def steady_rate(self) -> Optional[float]:
        """Documents per second after the first batch: None with fewer than two batches."""
        if self.first is None or self.last is None or self.last <= self.first:
            return None
        return (self.rows - self.first_rows) / (self.last - self.first)


@dataclass
class Summary:
    documents: int
    seconds: float
    errors: int
    skipped: int
    missing: int
    output: str
    errored_blocks: int = 0
    backend: str = "local"
    startup_seconds: Optional[float] = None  # until the first annotated batch (None: no batch)
    steady_docs_per_s: Optional[float] = None  # from the first batch to the last (None: under two batches)
    steady_documents: int = 0  # the documents that rate counts (those after the first batch)
    batches: int = 0
    phases: Optional[Dict[str, float]] = None  # start-up steps the backend timed (seconds)
    started_unix: Optional[float] = None  # Unix times of the clock's start, the first and the last batch
    first_batch_unix: Optional[float] = None
    last_batch_unix: Optional[float] = None

    def line(self) -> str:
        rate = self.documents / self.seconds if self.seconds > 0 else 0.0
        timing = f"{rate:.2f} docs/s"
        if self.startup_seconds is not None:
            timing += f"; first batch after {self.startup_seconds:.1f} s"
        if self.steady_docs_per_s is not None:
            timing += f", then {self.steady_docs_per_s:.2f} docs/s"
        text = (f"Annotated {self.documents} documents in {self.seconds:.1f} s ({timing}), "
                f"{self.errors} with errors, {self.skipped} already done")
        if self.missing:
            text += (f", {self.missing} NOT written ({self.errored_blocks} failed block(s); re-run the same "
                     "command to retry them)")
        return text + f"; output: {self.output}"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)
