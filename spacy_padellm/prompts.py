"""The PaDeLLM prompt templates and their tokenization.

Training and inference both build their token ids here, so the ids a model was trained on are the ids
it sees at inference by construction. A prompt and its target are always tokenized as ONE string and
split by position afterwards: tokenizing the pieces apart can change the ids at the seams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

from .errors import Errors, PaDeLLMError


@dataclass(frozen=True)
class Template:
    """One language's wording of the paper's template (byte-exact with the paper's code)."""

    name: str
    text_header: str  # before the document text
    label_header: str  # between the text and the label
    count_marker: str  # after the label: the model writes the count next
    mention_marker: str  # format string with {k}: the model writes the k-th mention next

    def doc_prefix(self, text: str) -> str:
        """The part of every prompt that depends on the document only (shared by all labels)."""
        return f"{self.text_header}{text}{self.label_header}"

    def prompt(self, text: str, label: str) -> str:
        """The step-1 prompt: after it the model writes the mention count of `label`."""
        return f"{self.doc_prefix(text)}{label}{self.count_marker}"

    def mention_prompt(self, text: str, label: str, count: int, k: int) -> str:
        """The step-2 prompt: after it the model writes the k-th (1-based) mention of `label`."""
        return f"{self.prompt(text, label)}{count}\n{self.mention_marker.format(k=k)}"

    def target(self, count: int, k: int, mention: str) -> str:
        """The training target of the k-th mention (without EOS); `count == 0` gives "0"."""
        if count == 0:
            return "0"
        return f"{count}\n{self.mention_marker.format(k=k)}{mention}"


# The paper's English template: "text:\n{text}\nentity type:\n{LABEL}\n\n<num>" and "<mention k>".
# The Chinese one is the official inference code's (GeorgeLuImmortal/PaDeLLM_NER, infer/padellm_*.py):
# ASCII colons, and U+2039 '‹' opening both markers.
TEMPLATES: Dict[str, Template] = {
    "en": Template("en", "text:\n", "\nentity type:\n", "\n\n<num>", "<mention {k}>"),
    "zh": Template("zh", "文本:\n", "\n指定NER标签:\n", "\n\n\u2039数量>", "\u2039第{k}文段>"),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise PaDeLLMError(Errors.E006.format(name=name, known=sorted(TEMPLATES)))
    return TEMPLATES[name]


def special_prefix(tokenizer: Any) -> List[int]:
    """The ids the tokenizer puts before a text by itself (a BOS for Llama-2, nothing for GPT-2)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_special) > len(without) and with_special[-len(without):] == without:
        return list(with_special[: len(with_special) - len(without)])
    return []


def encode(tokenizer: Any, text: str, prefix_ids: Sequence[int] = ()) -> List[int]:
    """Token ids of `text` with the tokenizer's leading special tokens but never a trailing one."""
    return list(prefix_ids) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def validate_labels(labels: Any) -> List[str]:
    """Labels become part of the prompt, so they must be plain one-line strings."""
    if not isinstance(labels, (list, tuple)) or not labels:
        raise PaDeLLMError(Errors.E011.format(labels=labels))
    if any(not isinstance(x, str) or not x.strip() or "\n" in x for x in labels):
        raise PaDeLLMError(Errors.E011.format(labels=labels))
    if len(set(labels)) != len(labels):
        raise PaDeLLMError(Errors.E011.format(labels=labels))
    return list(labels)
