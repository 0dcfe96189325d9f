"""Would a calibrated count pay? Per-label offsets on the count distribution, tuned on one half of dev.

The count step reads one distribution per (document, label) over the first count token. A calibration
adds a per-label offset to the log-probability of a count of 0 and of 1 (the two counts that most
errors confuse with their neighbour) before the argmax. This script needs no model: it reads the
distributions `count_probe.py --out` wrote, tunes the offsets on the even documents (half A) by exact
count match, and reports them on the odd ones (half B), and the other way round. Only a gain on the
half it was not tuned on counts.

    python project/scripts/count_calibration.py benchmarks/count_probe.json --out benchmarks/count_calibration.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

GRID = tuple(x / 4 for x in range(-12, 13))  # offsets in nats, -3 .. 3
Offsets = Dict[str, Tuple[float, float]]  # label -> (offset of count 0, offset of count 1)


def calibrated(row: Dict[str, Any], offsets: Offsets) -> int:
    """The count the calibration picks for one (document, label) row of count_probe."""
    b0, b1 = offsets.get(row["label"], (0.0, 0.0))
    logp = [math.log(max(p, 1e-30)) for p in row["p_digits"]]
    logp[0] += b0
    logp[1] += b1
    return max(range(len(logp)), key=lambda c: logp[c])


def exact(rows: Sequence[Dict[str, Any]], offsets: Offsets) -> float:
    return sum(calibrated(r, offsets) == r["gold"] for r in rows) / max(1, len(rows))


def tune(rows: Sequence[Dict[str, Any]], both: bool) -> Offsets:
    """Per label, the offsets with the best exact match on `rows` (ties: the smallest offsets).
    `both`: tune the offsets of 0 and 1; else only that of 0."""
    out: Offsets = {}
    for label in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == label]
        pairs = itertools.product(GRID, GRID if both else (0.0,))
        out[label] = max(pairs, key=lambda b: (exact(mine, {label: b}), -abs(b[0]) - abs(b[1])))
    return out


def halves(rows: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Even and odd documents. Rows come document by document, one per label (count_probe's order)."""
    n_labels = len({r["label"] for r in rows})
    doc = [r.get("doc", i // n_labels) for i, r in enumerate(rows)]
    return ([r for r, d in zip(rows, doc) if d % 2 == 0], [r for r, d in zip(rows, doc) if d % 2 == 1])


def report(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Exact match, greedy and calibrated, each half tuned on the other."""
    a, b = halves(rows)
    out: Dict[str, Any] = {"pairs": len(rows), "greedy": {"A": exact(a, {}), "B": exact(b, {})}}
    for name, both in (("offset_of_0", False), ("offsets_of_0_and_1", True)):
        on_a, on_b = tune(a, both), tune(b, both)
        out[name] = {"tuned_on_A": on_a, "A": exact(a, on_a), "B_held_out": exact(b, on_a),
                     "tuned_on_B": on_b, "B": exact(b, on_b), "A_held_out": exact(a, on_b)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", help="count_probe.py --out JSON")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = report(json.loads(Path(args.probe).read_text())["rows"])
    g = result["greedy"]
    print(f"{result['pairs']} (doc, label) pairs; greedy exact A {100 * g['A']:.2f}%, B {100 * g['B']:.2f}%")
    for name in ("offset_of_0", "offsets_of_0_and_1"):
        r = result[name]
        print(f"{name}: tuned on A {100 * r['A']:.2f}% -> held-out B {100 * r['B_held_out']:.2f}% "
              f"(greedy {100 * g['B']:.2f}); tuned on B {100 * r['B']:.2f}% -> held-out A "
              f"{100 * r['A_held_out']:.2f}% (greedy {100 * g['A']:.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": f"python project/scripts/count_calibration.py {args.probe}",
                                              **result}, indent=1))


if __name__ == "__main__":
    main()
