"""engine/memory.py: freed memory stays in the heap for reuse, and trim_if_grown gives it back."""
import sys

import pytest

from spacy_padellm.engine import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")

MB = 1 << 20


def _fill(mb: int) -> list:
    """mb blocks of 1 MB, each written (so resident), below the mmap threshold (so from the heap)."""
    return [bytes(range(256)) * 4096 for _ in range(mb)]


def test_freed_blocks_stay_resident_until_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert memory.reuse_freed_memory()
    memory._glibc().malloc_trim(0)  # earlier tests' free heap pages would serve the blocks without growth
    monkeypatch.setattr(memory, "_floor", None)
    assert memory.trim_if_grown(64 * MB) is False  # the first call records where the process stands
    blocks = _fill(200)
    keep = _fill(1)  # above the freed blocks: the heap's top is not free
    del blocks
    held = memory.resident_bytes()
    assert held is not None
    assert memory.trim_if_grown(64 * MB) is True
    after = memory.resident_bytes()
    assert after is not None and after < held - 100 * MB
    assert memory.trim_if_grown(64 * MB) is False  # no growth since that trim
    del keep


def test_small_growth_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_floor", None)
    memory.trim_if_grown(512 * MB)
    blocks = _fill(20)
    assert memory.trim_if_grown(512 * MB) is False
    del blocks
