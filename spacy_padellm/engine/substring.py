"""Mentions constrained to substrings of the text (`mentions_from_text`, the default; off: plain greedy).

A mention is copied from the text, but a small model sometimes writes a string that is not there
("Greensham" for "Grace Road") or stops inside a word ("Leicester" for "Leicestershire"). With the
constraint, each greedy step picks the most probable token among those that keep the mention a substring
of the text starting at a word start, and EOS is allowed only where some occurrence ends at a word end.
Decoding stays greedy over the allowed tokens, so the output differs from plain greedy decoding exactly
where plain greedy would have left the text.

Matching is on bytes (UTF-8 text, each token's bytes), so a character split over several byte-level tokens
stays reachable. A token's bytes come from the tokenizer's byte-level alphabet (GPT-2, SmolLM2, Qwen) or
from SentencePiece pieces ("\u2581" = space, "<0xNN>" = one byte); other tokenizers fall back to decoding
one token at a time, and a token that decodes to an incomplete character is then never proposed.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Set, Tuple


def _byte_level_alphabet() -> Dict[str, int]:
    """GPT-2's reversible map from bytes to printable characters, inverted (character -> byte)."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return {ch: b for b, ch in bytes_to_unicode().items()}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    return decoder is not None and "ByteLevel" in repr(decoder)


def _token_bytes(tokenizer: Any) -> List[Optional[bytes]]:
    n = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    out: List[Optional[bytes]] = [None] * n
    if _is_byte_level(tokenizer):
        alphabet = _byte_level_alphabet()
        for i, piece in enumerate(pieces):
            if i in special or not piece or any(ch not in alphabet for ch in piece):
                continue  # added tokens written in plain text (e.g. "<|im_end|>") are never copied
            out[i] = bytes(alphabet[ch] for ch in piece)
    elif any(p and p.startswith("\u2581") for p in pieces):
        for i, piece in enumerate(pieces):
            if i in special or not piece:
                continue
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out[i] = bytes([int(piece[3:5], 16)])
            else:
                out[i] = piece.replace("\u2581", " ").encode("utf8")
    else:
        for i in range(n):
            if i in special:
                continue
            text = tokenizer.decode([i], clean_up_tokenization_spaces=False)
            if text and "\ufffd" not in text:
                out[i] = text.encode("utf8")
    return out


class TokenBytes:
    """Every token's bytes, and a byte trie over them: the tokens that are a prefix of a byte string are
    found by one walk down the trie."""

    def __init__(self, tokenizer: Any) -> None:
        self.bytes = _token_bytes(tokenizer)
        self.trie: Dict[int, Any] = {}
        for i, b in enumerate(self.bytes):
            if not b:
                continue
            node = self.trie
            for byte in b:
                node = node.setdefault(byte, {})
            node.setdefault(-1, []).append(i)  # key -1: the tokens that end here

    def prefixes_of(self, data: bytes, start: int, into: set) -> None:
        """Add to `into` every token whose bytes are a prefix of data[start:]."""
        node = self.trie
        for pos in range(start, len(data)):
            node = node.get(data[pos])
            if node is None:
                return
            into.update(node.get(-1, ()))


# Scripts written without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar): every character
# boundary may start or end a mention there, or a Chinese text (MSRA) would be one "word" and its mentions
# could only be its prefixes. Sorted: a character below the first range needs no lookup.
UNSPACED = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x2E80, 0x2FDF), (0x3000, 0x30FF),
            (0x3100, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF),
            (0x20000, 0x3134F))


def joins(ch: str) -> bool:
    """Whether `ch` continues a word with a neighbouring word character (letters and digits of spaced scripts)."""
    return ch.isalnum() and (ord(ch) < UNSPACED[0][0] or not any(low <= ord(ch) <= high for low, high in UNSPACED))


def word_bounds(text: str) -> Tuple[List[int], set]:
    """Byte offsets where a mention may start (a non-space character that does not continue a word) and
    where it may end (after a non-space character, not inside a word)."""
    offsets = [0]
    for ch in text:
        offsets.append(offsets[-1] + len(ch.encode("utf8")))

    def inside(i: int) -> bool:  # between two word characters
        return 0 < i < len(text) and joins(text[i - 1]) and joins(text[i])

    starts = [offsets[i] for i in range(len(text)) if not text[i].isspace() and not inside(i)]
    ends = {offsets[i] for i in range(1, len(text) + 1) if not text[i - 1].isspace() and not inside(i)}
    return starts, ends


class SubstringConstraint:
    """The allowed next tokens of one mention row, advanced token by token."""

    def __init__(self, vocab: TokenBytes, text: str) -> None:
        self.vocab = vocab
        self.data = text.encode("utf8")
        self.matches, self.ends = word_bounds(text)  # occurrences of the mention so far: start offsets
        self.length = 0  # bytes of the mention so far

    def allowed(self) -> Tuple[List[int], bool]:
        """(tokens that keep the mention a substring of the text, whether EOS may end it here)."""
        tokens: set = set()
        for start in self.matches:
            self.vocab.prefixes_of(self.data, start + self.length, tokens)
        eos = self.length > 0 and any(start + self.length in self.ends for start in self.matches)
        return sorted(tokens), eos

    def advance(self, token: int) -> None:
        piece = self.vocab.bytes[token] if token < len(self.vocab.bytes) else None
        if not piece:
            self.matches = []
            return
        end = self.length + len(piece)
        self.matches = [s for s in self.matches if self.data[s + self.length: s + end] == piece]
        self.length = end

    def pick(self, logprobs: Any, eos_ids: Set[int], fallback: int) -> Tuple[int, float]:
        """This row's logits transform: the most probable allowed token of `logprobs` [vocab] (ties to the
        lowest id, as argmax) and its log-probability; EOS when nothing is allowed, so a row always ends."""
        import torch

        tokens, eos = self.allowed()
        if eos:
            tokens = sorted(set(tokens) | eos_ids)
        tokens = [t for t in tokens if t < logprobs.shape[0]]
        if not tokens:
            return next(iter(eos_ids), fallback), 0.0
        values = logprobs[torch.as_tensor(tokens, device=logprobs.device)]
        best = int(values.argmax())
        return tokens[best], float(values[best])


class Substrings:
    """Makes the constraint of each mention row from its text; the token bytes are built once (~1 s)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._vocab: Optional[TokenBytes] = None

    def for_text(self, text: str) -> SubstringConstraint:
        if self._vocab is None:
            self._vocab = TokenBytes(self.tokenizer)
        return SubstringConstraint(self._vocab, text)
