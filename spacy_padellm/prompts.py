"""The PaDeLLM prompt templates and their tokenization.

Training and inference both build their token ids here, so the ids a model was trained on are the ids
it sees at inference by construction. A prompt and its target are always tokenized as ONE string and
split by position afterwards: tokenizing the pieces apart can change the ids at the seams.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import Errors, PaDeLLMError


@dataclass(frozen=True)
class Template:
    """One language's wording of the paper's template (byte-exact with the paper's code)."""

    name: str
    text_header: str  # before the document text
    label_header: str  # between the text and the label
    count_marker: str  # after the label: the model writes the count next
    mention_marker: str  # format string with {k}: the model writes the k-th mention next
    # How a label is written in the prompt, where it is not the label itself: ("PER", "person"), ... The
    # label in doc.ents stays the label; only the model reads the word. An adapter trained with words keeps
    # them in its padellm.json, so inference writes the prompts it was trained on.
    label_words: Tuple[Tuple[str, str], ...] = ()

    def word(self, label: str) -> str:
        """The label as the prompt writes it."""
        return dict(self.label_words).get(label, label)

    def with_label_words(self, words: Optional[Mapping[str, str]]) -> "Template":
        """This template with `words` (label -> word in the prompt); None or {} keeps the labels."""
        return replace(self, label_words=tuple(sorted(validate_label_words(words).items())))

    def doc_prefix(self, text: str) -> str:
        """The part of every prompt that depends on the document only (shared by all labels)."""
        return f"{self.text_header}{text}{self.label_header}"

    def prompt(self, text: str, label: str) -> str:
        """The step-1 prompt: after it the model writes the mention count of `label`."""
        return f"{self.doc_prefix(text)}{self.word(label)}{self.count_marker}"

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


def get_template(name: str, label_words: Optional[Mapping[str, str]] = None) -> Template:
    """The template called `name`, writing labels as `label_words` says (absent labels: as themselves)."""
    if name not in TEMPLATES:
        raise PaDeLLMError(Errors.E006.format(name=name, known=sorted(TEMPLATES)))
    return TEMPLATES[name].with_label_words(label_words) if label_words else TEMPLATES[name]


def as_template(template: "str | Template") -> Template:
    """A Template given as itself or by name (callers that take either)."""
    return get_template(template) if isinstance(template, str) else template


def parse_label_words(value: str) -> Dict[str, str]:
    """`PER=person,ORG=organisation` (the CLI's form) -> {"PER": "person", "ORG": "organisation"}."""
    words: Dict[str, str] = {}
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        label, eq, word = item.partition("=")
        if not eq:
            raise PaDeLLMError(Errors.E021.format(words=value, why=f"{item!r} has no '='; write LABEL=word"))
        words[label.strip()] = word.strip()
    return validate_label_words(words)


def validate_label_words(words: Any) -> Dict[str, str]:
    """Words become part of the prompt like labels: plain one-line strings, and no two labels alike (the
    model could not tell them apart)."""
    if not words:
        return {}
    if not isinstance(words, Mapping):
        raise PaDeLLMError(Errors.E021.format(words=words, why="expected a mapping of label -> word"))
    for label, word in words.items():
        if not all(isinstance(x, str) and x.strip() and "\n" not in x for x in (label, word)):
            raise PaDeLLMError(Errors.E021.format(words=words, why=f"{label!r} -> {word!r} is not two one-line "
                                                  "strings"))
    if len(set(words.values())) != len(words):
        raise PaDeLLMError(Errors.E021.format(words=words, why="two labels share a word"))
    return dict(words)


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
