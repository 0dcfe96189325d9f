"""Whether a pass should carry extra tokens, decided from what this machine's passes cost.

Two extras trade tokens for passes without changing the output: count guesses (the mention prompts of a
count of 1 ride along in the first pass, so a label with one mention needs no second prompt pass) and
copy-speculation (a mention row also feeds the text's next tokens, and one pass verifies them). Whether
they pay depends on the machine: a pass has a cost that does not grow with its tokens (reading the
weights, the per-op overhead) and one that does (compute). On a 2-core AMX Xeon in bf16 a 1-token pass
costs ~21 ms, 64 tokens ~33 ms and 32 rows of 5 tokens ~90 ms, so extra tokens are nearly free in a small
pass and full price in a large one; on a GPU they are nearly free up to thousands of tokens. A fixed "small
call" threshold cannot know this. `PassCost` measures passes of the shapes the choice is about once
(lazily, when first needed: a first pass of 1, 16 and 64 tokens; greedy passes of 1, 8 and 32 rows, with and
without proposals, on a prompt-sized cache and with the logits of every fed column, as the decoder runs
them) and interpolates;
`Extras` weighs the tokens an extra adds against the passes it saves, with the rates at which it saved them
in the calls decoded so far (count distribution, accepted proposals).

A calibration of a few passes can be wrong on its own: one slow repeat, or a kernel that is slow only in
the calibration's shape, priced a 5-token pass at 38 ms against 20 ms for one token on an AVX512-BF16 EPYC
(run 22), where the real mention passes cost no more than a one-token pass, so it never speculated and ran
twice the passes of the fixed rule. So the timed repeats are interleaved (a slow moment slows every shape,
not one) and the fastest is kept, and the greedy passes the decoder really runs correct the estimate: per
kind (plain, speculating) the median ratio of their seconds to the calibration's (`saw_pass`). The passes
that speculate to measure the acceptance rate (one in EXPLORE) keep the speculating kind's ratio measured,
and while every pass speculates, one in EXPLORE_PLAIN runs plain.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

PROMPT_SIZES = (1, 16, 64)  # tokens of the timed first passes
ROW_SIZES = (1, 8, 32)  # rows of the timed greedy passes
EXPLORE = 16  # one greedy pass in this many speculates even when the estimate says it does not pay
EXPLORE_PLAIN = 64  # and one in this many runs plain while every pass speculates (its cost stays measured)
CACHE = 96  # cached tokens of the timed greedy passes: about a prompt (text and label) of a CoNLL sentence
RECENT = 16  # real passes per kind whose ratio to the calibration corrects it (their median)


def clock(model: Any) -> float:
    """perf_counter after the model's device has finished its queued work: a GPU runs a pass's kernels
    after the call returns, so an unsynchronised time would be the launch's, not the pass's."""
    device = getattr(model, "device", None)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass(frozen=True)
class PassCost:
    """Seconds of one pass by the tokens it feeds: measured points, linear between them and beyond."""
    points: Tuple[Tuple[int, float], ...]

    def seconds(self, tokens: float) -> float:
        pts = self.points
        if tokens <= pts[0][0]:
            return pts[0][1]
        for (n0, t0), (n1, t1) in zip(pts, pts[1:]):
            if tokens <= n1 or (n1, t1) == pts[-1]:
                return t0 + (t1 - t0) * (tokens - n0) / (n1 - n0)
        return pts[-1][1]

    def extra(self, tokens: float, more: float) -> float:
        """What `more` tokens add to a pass of `tokens`."""
        return max(0.0, self.seconds(tokens + more) - self.seconds(tokens))

    def describe(self, unit: str = "tok") -> str:
        return ", ".join(f"{n} {unit} {1000 * t:.0f} ms" for n, t in self.points)

    @classmethod
    def first_pass(cls, model: Any, lean: Any = None, sizes: Sequence[int] = PROMPT_SIZES) -> "PassCost":
        """One row of `size` tokens from nothing, by size."""
        return cls.of(model, lean, [(None, [[100 + i % 100 for i in range(n)]]) for n in sizes], sizes)

    @classmethod
    def greedy_passes(cls, model: Any, lean: Any, widths: Sequence[int], sizes: Sequence[int] = ROW_SIZES,
                      cache: int = CACHE) -> Dict[int, "PassCost"]:
        """Per width: `size` rows of `width` tokens each on a `cache`-token cache, by size, with the logits of
        all `width` columns (rows with a cache cost more than one row of as many tokens: attention and the
        per-row work; a speculating pass scores every proposed column)."""
        from .kv import extend

        _, one = extend(model, None, [[100 + i % 100 for i in range(cache)]], 0, lean=lean)
        states = [one.select([0] * n) for n in sizes]
        shapes = [(st, [[7] * w] * n, w) for w in widths for st, n in zip(states, sizes)]
        times = cls.time_passes(model, lean, shapes)
        return {w: cls.monotone(list(zip(sizes, times[i * len(sizes):(i + 1) * len(sizes)])))
                for i, w in enumerate(widths)}

    @classmethod
    def of(cls, model: Any, lean: Any, passes: Sequence[Tuple[Any, List[List[int]]]], sizes: Sequence[int],
           repeats: int = 3) -> "PassCost":
        """The fastest of `repeats` timings of each (state, segments) pass, through the engine's pass."""
        return cls.monotone(list(zip(sizes, cls.time_passes(model, lean, [(st, ids, 1) for st, ids in passes],
                                                             repeats))))

    @staticmethod
    def time_passes(model: Any, lean: Any, shapes: Sequence[Tuple[Any, List[List[int]], int]],
                    repeats: int = 3) -> List[float]:
        """Seconds of each (state, segments, logit columns) pass: a warm-up of every shape, then `repeats`
        rounds over all shapes in turn (a slow moment of the machine slows one round, not one shape), the
        fastest kept (noise only ever adds time)."""
        from .kv import extend

        for state, ids, n_logits in shapes:
            extend(model, state, ids, 0, n_logits=n_logits, lean=lean)
        best = [float("inf")] * len(shapes)
        for _ in range(repeats):
            for i, (state, ids, n_logits) in enumerate(shapes):
                start = clock(model)
                extend(model, state, ids, 0, n_logits=n_logits, lean=lean)
                best[i] = min(best[i], clock(model) - start)
        return best

    @classmethod
    def monotone(cls, points: List[Tuple[int, float]]) -> "PassCost":
        """A pass never costs less for more: noise must not make extras look free."""
        mono = [points[0]]
        for n, t in points[1:]:
            mono.append((n, max(t, mono[-1][1])))
        return cls(tuple(mono))


@dataclass
class Extras:
    """Per call: count guesses or not; per greedy pass: speculate or not. `fixed_small_batch` > 0 keeps
    the old rule for guesses (the decoder applies it to speculation too: extras for calls of at most that
    many texts, never otherwise)."""
    model: Any
    lean: Any = None
    fixed_small_batch: int = 0
    speculate_width: int = 4  # the setting's proposal tokens: greedy passes of 1 + this are timed
    meter: Any = None  # the runner's Meter: its `choices` count what was chosen (the benchmark prints them)
    prompt_cost: Optional[PassCost] = None  # seconds by tokens of a one-row first pass
    row_costs: Dict[int, PassCost] = field(default_factory=dict)  # per tokens a row feeds: seconds by rows
    # label rows seen with a count of 0, 1 and 2+ (a flat prior of one each, soon outweighed)
    count_rows: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    # row passes that fed a proposal, and the proposed tokens they got accepted (prior: one each)
    proposal_rows: float = 2.0
    accepted: float = 2.0
    # greedy passes since the last one of each kind (False: plain, True: speculating): a kind not run for
    # EXPLORE (speculating) or EXPLORE_PLAIN (plain) passes runs once, so its rate and cost stay measured
    since: Dict[bool, int] = field(default_factory=lambda: {False: 0, True: 0})
    # the last RECENT real greedy passes per kind (False: plain, True: speculating): seconds / calibration
    ratios: Dict[bool, List[float]] = field(default_factory=lambda: {False: [], True: []})

    def first_pass_cost(self) -> PassCost:
        self.measure()
        return self.prompt_cost  # type: ignore[return-value]

    def row_cost(self, width: int) -> PassCost:
        self.measure(width)
        return self.row_costs[width]

    def measure(self, width: int = 0) -> None:
        """Time what is not timed yet, all at once (1.4 s for SmolLM2-135M on a 2-core AMX Xeon), in the
        first call: the warm-up's."""
        widths = sorted(({1, 1 + self.speculate_width} | ({width} if width else set())) - set(self.row_costs))
        if self.prompt_cost is not None and not widths:
            return
        with torch.inference_mode():
            if self.prompt_cost is None:
                self.prompt_cost = PassCost.first_pass(self.model, self.lean)
            if widths:
                self.row_costs.update(PassCost.greedy_passes(self.model, self.lean, widths))

    def describe(self) -> Dict[str, str]:
        """The pass costs measured so far (the benchmark prints them)."""
        out = {"first pass, by tokens": self.prompt_cost.describe()} if self.prompt_cost else {}
        for width, cost in sorted(self.row_costs.items()):
            out[f"greedy pass, by rows of {width} token(s)"] = cost.describe(unit="rows")
        for kind, name in ((False, "plain"), (True, "speculating")):
            if self.ratios[kind]:
                out[f"real {name} greedy passes / calibration"] = f"{self.ratio(kind):.2f}x"
        return out

    def _count(self, key: str) -> None:
        if self.meter is not None:
            self.meter.choices[key] = self.meter.choices.get(key, 0) + 1

    # ---- count guesses --------------------------------------------------------------------------
    def guesses(self, wanted: int, docs: int, labels: int, prompt_tokens: int, guess_tokens: int) -> int:
        """`wanted` guesses (the setting) or 0. Guesses add `guess_tokens` to the first pass of
        `prompt_tokens`; they save the second (mention prompt) pass when no label row of the call has a
        count of 2 or more, where without them any count of 1 or more needs it."""
        if wanted == 0:
            return 0
        if self.fixed_small_batch:
            use = docs <= self.fixed_small_batch
        else:
            zero, one, more = self.count_rows
            total = zero + one + more
            rows = docs * labels
            p_skip_with = ((zero + one) / total) ** rows
            p_skip_without = (zero / total) ** rows
            cost = self.first_pass_cost()
            use = (p_skip_with - p_skip_without) * self.second_pass(rows * (1 - zero / total)) > \
                cost.extra(prompt_tokens, guess_tokens)
        self._count("count guesses" if use else "no count guesses")
        return wanted if use else 0

    def second_pass(self, rows: float) -> float:
        """Seconds of the mention prompt pass: the mean of those run so far (the meter's), else a greedy
        pass of as many rows plus ~7 more tokens per row."""
        passes = self.meter.passes.get("mention_prompt", 0) if self.meter is not None else 0
        if passes:
            return self.meter.seconds["mention_prompt"] / passes
        return self.row_cost(1).seconds(rows) + self.first_pass_cost().extra(rows, 7 * rows)

    def saw_counts(self, counts: Sequence[int]) -> None:
        for c in counts:
            self.count_rows[min(int(c), 2)] += 1

    # ---- copy-speculation -----------------------------------------------------------------------
    def speculate(self, wanted: int, rows: int) -> int:
        """`wanted` proposal tokens per row for the next greedy pass of `rows` rows, or 0 (decided per
        pass, so speculation starts once enough rows have finished). A pass of proposals saves the share
        of passes its accepted tokens stand for, and costs what its proposed tokens add to the pass.
        (The fixed rule decides per call, in the decoder.)"""
        if wanted == 0:
            return 0
        plain = self.pass_seconds(rows, 0)
        more = self.pass_seconds(rows, wanted) - plain
        gain = self.accepted / self.proposal_rows  # tokens a row's proposal gains per pass, on average
        use = gain / (1.0 + gain) * plain > more
        # a kind that is never run learns nothing: now and then run it anyway, so its rate and cost stay
        # measured (real plain passes also come from rows without a proposal: saw_pass counts them)
        explore = self.since[not use] + 1 >= (EXPLORE if not use else EXPLORE_PLAIN)
        chosen = use != explore
        self.since[chosen] = 0
        self.since[not chosen] += 1
        self._count(("speculation" if chosen else "no speculation") + (" to measure it" if explore else ""))
        return wanted if chosen else 0

    def pass_seconds(self, rows: int, proposals: int) -> float:
        """A greedy pass of `rows` rows feeding 1 + `proposals` tokens each: the calibration, times the median
        ratio of the real passes of its kind to it (1 before there are any)."""
        return self.ratio(proposals > 0) * self.row_cost(1 + proposals).seconds(rows)

    def ratio(self, speculating: bool) -> float:
        """The median of the recent real passes' seconds over the calibration's, for one kind (1: none yet)."""
        seen = self.ratios[speculating]
        return statistics.median(seen) if seen else 1.0

    def saw_pass(self, rows: int, proposals: int, seconds: float) -> None:
        """The decoder ran a greedy pass of `rows` rows, proposing up to `proposals` tokens per row (0: a
        plain pass), in `seconds`: how far the calibration is off for passes of its kind."""
        if rows <= 0 or seconds <= 0 or proposals + 1 not in self.row_costs:  # nothing measured to correct
            return
        kind = self.ratios[proposals > 0]
        kind.append(seconds / self.row_cost(1 + proposals).seconds(rows))
        del kind[:-RECENT]
        if not proposals:
            self.since[False] = 0

    def saw_proposal(self, accepted: int) -> None:
        """A row fed a proposal in the last pass and got `accepted` of its tokens."""
        self.proposal_rows += 1
        self.accepted += accepted

