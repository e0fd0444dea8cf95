"""One head-set grammar: how the CLI, the dashboard and study specs name a set of attention heads.

A head is ``LAYER.HEAD`` (0-based, as every table and figure writes it). A head set is a comma-separated
list of items (spaces ignored)::

    HEADSET := ITEM ("," ITEM)*
    ITEM    := L "." H                    one head                          3.1
             | L "." H "-" L2 "." H2      every head from L.H to L2.H2,     3.0-3.4  (heads 0-4 of layer 3)
                                          in layer-major order              3.6-4.2  (3.6, 3.7, ..., 4.2)
             | L ".*"                     every head of layer L             12.*
             | "*"                        every head of the model           *   (also: all)
             | SOURCE ":top-" K           the K heads with the highest      retrieval:top-10, sinks:top-5
                                          score in an analyzer's table
             | "random:" K                K heads drawn with the seed       random:10
                                          (``random.Random(seed)``) from the command's pool

``L:H`` is read as ``L.H`` (the dashboard's old spelling). Which ``SOURCE`` names exist and what
``random:K`` draws from depend on the command: ``ablate`` and ``masking-test`` know ``retrieval``
(the saved retrieval scores) and draw random heads from the non-retrieval heads (score <= 0.1);
elsewhere ``random:K`` draws from all heads. Items keep their order and repeats are dropped.

The ``trace`` command's ``--layers``/``--heads`` are a different thing, index lists that select a grid
of layers x head indices to record (:func:`parse_indices`: ``all``, ``3``, ``0,2,5-7``).

Every malformed item raises one line naming the item and this grammar.
"""
from __future__ import annotations

import random
import re
from typing import Callable, Iterable, Mapping

import pandas as pd

from .errors import HeadIndexError, WorkbenchError

Head = tuple[int, int]
GRAMMAR = "L.H, L.H-L.H, L.*, *, SOURCE:top-K or random:K (e.g. 3.1,7.*,retrieval:top-10)"

_HEAD = re.compile(r"(\d+)[.:](\d+)")
_RANGE = re.compile(r"(\d+)\.(\d+)-(\d+)\.(\d+)")
_LAYER = re.compile(r"(\d+)\.\*")
_TOP = re.compile(r"([A-Za-z_][\w-]*):top-?(\d+)")
_RANDOM = re.compile(r"random:(\d+)")


def is_selection(text: str) -> bool:
    """Whether ``text`` uses an analyzer selection (``SOURCE:top-K`` or ``random:K``), which needs scores."""
    return any(_TOP.fullmatch(p.strip()) or _RANDOM.fullmatch(p.strip()) for p in text.split(","))


def top_heads(scores: pd.DataFrame, k: int, column: str = "score") -> list[Head]:
    """The ``k`` heads with the highest ``column`` (ties: lower layer, then lower head first)."""
    top = scores.sort_values([column, "layer", "head"], ascending=[False, True, True]).head(int(k))
    return [(int(a), int(b)) for a, b in zip(top["layer"], top["head"])]


def parse_head_set(text: str, n_layers: int | None = None, n_heads: int | None = None,
                   scores: Mapping[str, pd.DataFrame | Callable[[], pd.DataFrame]] | None = None,
                   pool: Iterable[Head] | None = None, pool_name: str = "heads", seed: int = 0,
                   hint: str = GRAMMAR) -> list[Head]:
    """Parse a head set (module docstring) into a list of (layer, head), in item order without repeats.

    Args:
        text: the head set, e.g. ``"3.1,7.*"`` or ``"retrieval:top-10"``; empty items are skipped, so ``""``
            gives [] (callers that need heads say so).
        n_layers, n_heads: the model's shape; needed by ``L.*``, ``*``, ranges across layers and
            ``random:K`` without a pool, and used to range-check every head.
        scores: ``SOURCE`` name -> per-head table (``layer``, ``head``, ``score``) or a function loading it.
        pool: the heads ``random:K`` draws from (default: all heads); ``pool_name`` names it in errors.
        seed: seed of ``random:K``.
        hint: the grammar quoted in errors.
    Raises:
        WorkbenchError: an item is malformed, a source is unknown, or ``random:K`` asks for more heads than
            the pool holds.
        HeadIndexError: a head lies outside the model.
    """
    out: list[Head] = []
    for raw in text.replace(";", ",").split(","):
        item = raw.strip().replace(" ", "")
        if item:
            out += _item(item, n_layers, n_heads, scores or {}, pool, pool_name, seed, hint)
    if n_layers is not None and n_heads is not None:
        for layer, h in out:
            if not (0 <= layer < n_layers and 0 <= h < n_heads):
                raise HeadIndexError(f"head {layer}.{h} is out of range: the model has layers 0..{n_layers - 1} "
                                     f"and heads 0..{n_heads - 1}")
    return list(dict.fromkeys(out))


def _shape(item: str, n_layers: int | None, n_heads: int | None) -> tuple[int, int]:
    if n_layers is None or n_heads is None:
        raise WorkbenchError(f"head set item {item!r} needs the model's shape: name the heads one by one as L.H")
    return n_layers, n_heads


def _item(item: str, n_layers, n_heads, scores, pool, pool_name: str, seed: int, hint: str) -> list[Head]:
    if item in ("*", "all"):
        nl, nh = _shape(item, n_layers, n_heads)
        return [(a, b) for a in range(nl) for b in range(nh)]
    if m := _HEAD.fullmatch(item):
        return [(int(m.group(1)), int(m.group(2)))]
    if m := _LAYER.fullmatch(item):
        _, nh = _shape(item, n_layers, n_heads)
        return [(int(m.group(1)), b) for b in range(nh)]
    if m := _RANGE.fullmatch(item):
        a, b = (int(m.group(1)), int(m.group(2))), (int(m.group(3)), int(m.group(4)))
        if b < a:
            raise WorkbenchError(f"cannot read head range {item!r}: its end comes before its start (use {hint})")
        if a[0] == b[0]:
            return [(a[0], h) for h in range(a[1], b[1] + 1)]
        nl, nh = _shape(item, n_layers, n_heads)
        return [(x, y) for x in range(a[0], b[0] + 1) for y in range(nh) if a <= (x, y) <= b]
    if m := _TOP.fullmatch(item):
        name, k = m.group(1), int(m.group(2))
        if name == "random":
            raise WorkbenchError(f"cannot read head {item!r}: use random:K for K random heads")
        if name not in scores or scores[name] is None:
            known = ", ".join(f"{s}:top-K" for s in scores) or "none here: name heads as L.H"
            raise WorkbenchError(f"head selection {item!r} needs {name} scores, which this command does not read "
                                 f"(selections it knows: {known})")
        table = scores[name]() if callable(scores[name]) else scores[name]
        return top_heads(table, k)
    if m := _RANDOM.fullmatch(item):
        k = int(m.group(1))
        if pool is None:
            nl, nh = _shape(item, n_layers, n_heads)
            pool = [(a, b) for a in range(nl) for b in range(nh)]
        pool = sorted(pool)
        if k > len(pool):
            raise WorkbenchError(f"random:{k} asks for more than the {len(pool)} {pool_name}")
        return sorted(random.Random(seed).sample(pool, k))
    raise WorkbenchError(f"cannot read head {item!r}: use {hint}")


def parse_indices(spec: str | None, n: int, what: str) -> list[int] | None:
    """Parse an index list ``"all"``, ``"3"``, ``"0,2,5-7"`` into indices below ``n`` (None for all): the
    ``trace`` command's ``--layers`` and ``--heads`` (a grid of layers x head indices to record).

    Raises:
        WorkbenchError: malformed (e.g. ``x``, ``1-``, ``-1``) or empty.
        HeadIndexError: an index is out of range.
    """
    if spec is None or spec.strip() == "all":
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise WorkbenchError(f"cannot read --{what}s {spec!r}: give indices 0..{n - 1} like 0,3,5-7 (or all)")
        out += list(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise HeadIndexError(f"{what} {bad[0]} is out of range: the model has {what}s 0..{n - 1}")
    return out
