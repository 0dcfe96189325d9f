"""Build and parse the paper's two autoregressive output formats.

AutoReg_Struct: `((PER): (Cuttitta), (MISC): (1995 World Cup), (LOC): (Italy), (ORG): (NULL))`; a label
with several mentions lists them in text order, `(PER): (A), (B)`. AutoReg_Aug: the text rewritten with
every mention bracketed, `[Japan | LOC] beat [Syria | LOC]`. Parsers never raise on model output: what
cannot be read is skipped, so a malformed generation costs recall, not a crash.
"""
from __future__ import annotations

import re
from typing import List, Sequence, Tuple

Entity = Tuple[int, int, str]  # char start, char end, label
Pair = Tuple[str, str]  # label, mention string

STRUCT_PROMPT = "text:\n{text}\nentities:\n"
AUG_PROMPT = "text:\n{text}\nannotated text:\n"
NULL = "NULL"


def struct_target(text: str, entities: Sequence[Entity], labels: Sequence[str]) -> str:
    parts = []
    for label in labels:
        mentions = [text[s:e] for s, e, lab in sorted(entities) if lab == label]
        items = ", ".join(f"({m})" for m in mentions) if mentions else f"({NULL})"
        parts.append(f"({label}): {items}")
    return "(" + ", ".join(parts) + ")"


def parse_struct(output: str, labels: Sequence[str]) -> List[Pair]:
    """(label, mention) pairs in output order; unknown labels, NULL and unreadable parts are skipped."""
    body = output.strip()
    if body.startswith("("):
        body = body[1:]
    if body.endswith(")"):
        body = body[:-1]
    heads = list(re.finditer(r"\((" + "|".join(re.escape(x) for x in labels) + r")\):\s*", body)) if labels else []
    pairs: List[Pair] = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(body)
        segment = body[head.end():end].rstrip().rstrip(",").strip()
        # items are "(mention)" separated by ", "; a mention may itself hold parentheses or commas
        items = re.split(r"\),\s*\(", segment)
        if not segment.endswith(")"):  # generation stopped inside the last item
            items = items[:-1]
        for item in items:
            if re.search(r"\S\):\s*\(", item):  # the head of a label we do not know
                continue
            mention = item.strip()
            if mention.startswith("("):
                mention = mention[1:]
            if mention.endswith(")"):
                mention = mention[:-1]
            mention = mention.strip()
            if mention and mention != NULL:
                pairs.append((head.group(1), mention))
    return pairs


def aug_target(text: str, entities: Sequence[Entity]) -> str:
    out, pos = [], 0
    for s, e, label in sorted(entities):
        out.append(text[pos:s])
        out.append(f"[{text[s:e]} | {label}]")
        pos = e
    out.append(text[pos:])
    return "".join(out)


def parse_aug(output: str, labels: Sequence[str]) -> List[Pair]:
    if not labels:
        return []
    pattern = r"\[([^\[\]]+?) \| (" + "|".join(re.escape(x) for x in labels) + r")\]"
    return [(m.group(2), m.group(1).strip()) for m in re.finditer(pattern, output) if m.group(1).strip()]


FORMATS = {
    "autoreg_struct": (STRUCT_PROMPT, lambda text, ents, labels: struct_target(text, ents, labels), parse_struct),
    "autoreg_aug": (AUG_PROMPT, lambda text, ents, labels: aug_target(text, ents), parse_aug),
}
