"""Real English text that ships with Python: the prose of ``pydoc_data.topics``.

``pydoc_data.topics.topics`` maps 79 help topics to the text of the Python language
reference (about 465k characters). We keep prose paragraphs (unwrapped, no code blocks,
tables or heading underlines) and split topics deterministically into a ``train`` part
and a ``heldout`` part (every fifth paragraph) so that calibration and
evaluation never share text.
"""
from __future__ import annotations

import re
from functools import lru_cache

import torch

_UNDERLINE = re.compile(r"^[*=\-~^\"]{3,}$")


def _is_prose(par: str) -> bool:
    if len(par) < 80 or ">>>" in par or "..." in par[:4] or not par.rstrip().endswith((".", ":", ")")):
        return False
    letters = sum(c.isalpha() or c.isspace() for c in par)
    return letters / len(par) > 0.85


@lru_cache(maxsize=None)
def prose_paragraphs(split: str = "all") -> tuple[str, ...]:
    """Prose paragraphs of ``pydoc_data.topics`` in topic order.

    Args:
        split: ``"all"``, ``"train"`` (4 of 5 paragraphs) or ``"heldout"`` (every fifth paragraph).
    Returns:
        tuple of paragraphs, each one line of plain English.
    Raises:
        ValueError: unknown split.
    """
    from pydoc_data.topics import topics

    if split not in ("all", "train", "heldout"):
        raise ValueError(f"unknown split {split!r}: use 'all', 'train' or 'heldout'")
    out = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = [ln.strip() for ln in block.strip().splitlines()]
            if not lines or any(_UNDERLINE.match(ln) for ln in lines):
                continue
            par = " ".join(lines)
            if _is_prose(par):
                out.append(par)
    if split == "all":
        return tuple(out)
    return tuple(p for i, p in enumerate(out) if (i % 5 == 4) == (split == "heldout"))


def prose_text(split: str = "all") -> str:
    """All prose paragraphs of a split joined by blank lines."""
    return "\n\n".join(prose_paragraphs(split))


def token_windows(tokenizer, n_tokens: int, n_samples: int, split: str = "all", stride: int | None = None,
                  prefix_ids: list[int] | None = None) -> torch.Tensor:
    """Consecutive windows of the tokenised prose.

    Args:
        tokenizer: a Hugging Face tokenizer.
        n_tokens: tokens per window (including ``prefix_ids``).
        n_samples: number of windows.
        split: text split (see :func:`prose_paragraphs`).
        stride: tokens between window starts (default ``n_tokens``, i.e. disjoint windows).
        prefix_ids: ids put in front of every window (e.g. a BOS token); none by default.
    Returns:
        (n_samples, n_tokens) int64 ids.
    Raises:
        ValueError: the text is too short for that many windows.
    """
    prefix = list(prefix_ids or [])
    body = n_tokens - len(prefix)
    stride = stride or body
    ids = tokenizer(prose_text(split), return_tensors="pt").input_ids[0]
    need = (n_samples - 1) * stride + body
    if need > ids.numel():
        raise ValueError(
            f"the {split!r} prose has {ids.numel()} tokens, too few for {n_samples} windows of {n_tokens} "
            f"with stride {stride}: ask for fewer or shorter samples"
        )
    rows = [torch.cat([torch.tensor(prefix, dtype=torch.long), ids[i * stride: i * stride + body]]) for i in range(n_samples)]
    return torch.stack(rows)
