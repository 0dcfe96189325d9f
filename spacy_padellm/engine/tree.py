"""Token tries: many sequences that share prefixes, laid out as one row of nodes.

Used twice with the same rules: inference feeds a document's label prompts as one trie (engine/kv.py
`extend_tree`), and training packs all examples of a document into one trie (training/packing.py). A node
attends to its ancestors and itself; its position id is its depth. Parents always come before their
children, so masks and depths are built in one forward sweep.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Dict, List, Sequence, Tuple

import numpy as np


def ancestor_mask(parents: Sequence[int]) -> np.ndarray:
    """[nodes, nodes] bool: node q may attend to node n (n is q or one of its ancestors; -1: no parent)."""
    n = len(parents)
    out = np.zeros((n, n), dtype=bool)
    for q, parent in enumerate(parents):
        if parent >= 0:
            out[q] = out[parent]
        out[q, q] = True
    return out


def depths(parents: Sequence[int]) -> List[int]:
    """Each node's depth (a root is 0): its position id after whatever the row had cached."""
    depth: List[int] = []
    for parent in parents:
        depth.append(0 if parent < 0 else depth[parent] + 1)
    return depth


@dataclass(frozen=True)
class Trie:
    """Token sequences merged on shared prefixes: node i holds tokens[i] and follows parents[i] (-1: the
    row's cached tokens); ends[s] is the node holding sequence s's last token."""
    tokens: List[int]
    parents: List[int]
    ends: List[int]

    @staticmethod
    def of(sequences: Sequence[Sequence[int]]) -> "Trie":
        tokens: List[int] = []
        parents: List[int] = []
        children: Dict[Tuple[int, int], int] = {}
        ends = []
        for seq in sequences:
            if len(seq) == 0:
                raise ValueError("every sequence in a trie needs at least one token")
            node = -1
            for tok in seq:
                node = insert(tokens, parents, children, node, tok)
            ends.append(node)
        return Trie(tokens, parents, ends)

    def path(self, node: int) -> List[int]:
        """Nodes from the root to `node`, in order."""
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    def ancestors(self) -> np.ndarray:
        return ancestor_mask(self.parents)

    @cached_property
    def depth(self) -> List[int]:
        """Each node's depth, computed once: the pass that feeds the trie and its meter both read it."""
        return depths(self.parents)

    def depths(self) -> List[int]:
        return self.depth


def insert(tokens: List[int], parents: List[int], children: Dict[Tuple[int, int], int], node: int, tok: int) -> int:
    """The child of `node` holding `tok`, created if new: one step of building a trie in place."""
    key = (node, tok)
    if key not in children:
        children[key] = len(tokens)
        tokens.append(tok)
        parents.append(node)
    return children[key]
