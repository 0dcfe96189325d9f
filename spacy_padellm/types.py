"""The values that travel between the stages: what the engine predicts for a text, and its counters.

Torch-free, so dedup, align, chunking and the component use them without loading the model. One stats
schema (`DocStats`) is written by the engine, summed over a long document's chunks, stored in
`doc.user_data["padellm"]` and averaged by the benchmark.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Mapping, Optional, Protocol, Sequence, Tuple


STAGES = ("prompt", "count", "mention_prompt", "mention")  # what a forward pass is for (engine Meter keys)


class MentionLike(Protocol):
    """What dedup and align read of a mention (the baselines' parsed pairs have this shape too)."""
    label: str
    k: int
    text: str
    logprob: float


@dataclass(frozen=True)
class MentionPrediction:
    label: str
    k: int  # 1-based position among the label's mentions
    text: str
    logprob: float  # sum over the mention's tokens, EOS and padding excluded
    n_tokens: int
    finished: bool  # ended on EOS (False: cut at max_new_tokens)
    # the doc's characters [start, end) the mention was read from (its chunk); None: the whole doc
    window: Optional[Tuple[int, int]] = None


@dataclass
class DocStats:
    """Counters of one text (or, merged, one document): what the benchmark and user_data report."""
    forward_passes: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    sequences: int = 0  # the paper's output sequences (one per (label, mention), or per empty label)
    sequence_tokens: int = 0  # their tokens in all

    def merge(self, other: "DocStats") -> "DocStats":
        """Summed counters (the caller decides how passes shared between chunks are counted)."""
        return DocStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def to_dict(self) -> Dict[str, int]:
        return asdict(self)

    def __getitem__(self, name: str) -> int:
        """`stats["forward_passes"]`, as when the stats were a dict (user code reads them so)."""
        if name not in _STAT_NAMES:
            raise KeyError(f"{name!r} is not a DocStats counter; use one of {sorted(_STAT_NAMES)}")
        return getattr(self, name)

    def get(self, name: str, default: int = 0) -> int:
        return getattr(self, name) if name in _STAT_NAMES else default


_STAT_NAMES = frozenset(f.name for f in fields(DocStats))


@dataclass(frozen=True)
class DocPrediction:
    counts: Dict[str, int]
    raw_counts: Dict[str, str]  # what the model wrote for each count, for debugging babble
    mentions: Tuple[MentionPrediction, ...]
    stats: DocStats = field(default_factory=DocStats)
    chunks: int = 1  # the chunks (engine calls' texts) this prediction was merged from

    def __post_init__(self) -> None:
        if isinstance(self.stats, Mapping):  # a plain dict of counters (test doubles, user engines)
            object.__setattr__(self, "stats", DocStats(**self.stats))


class Engine(Protocol):
    """What the pipe decodes with (`PaDeLLMNER.set_engine`): the PaDeLLM decoder, or the paper's
    reference procedure, or a test double."""

    def predict(self, texts: Sequence[str], labels: Sequence[str], max_counts: Sequence[int]
                ) -> List[DocPrediction]: ...


def output_sequences(raw_counts: Dict[str, str], mentions: Sequence[MentionPrediction]) -> Tuple[int, int]:
    """The paper's output sequences of one text, and their tokens in all: one sequence per (label,
    mention), or one per label without mentions, each `{count}\n<mention k>{mention}<eos>` less the
    template's `\n<mention k>` (count digits and the token ending them, mention tokens, EOS). The paper
    compares the mean length of these with autoregressive NER's single sequence (~13% on its data)."""
    lengths: Dict[str, List[int]] = {}
    for m in mentions:
        lengths.setdefault(m.label, []).append(m.n_tokens + int(m.finished))
    n = tokens = 0
    for label, raw in raw_counts.items():
        per_mention = lengths.get(label) or [0]
        n += len(per_mention)
        tokens += sum(len(raw) + 1 + t for t in per_mention)
    return n, tokens
