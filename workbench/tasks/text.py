"""Real English text that ships with Python: the prose of ``pydoc_data.topics``.

``pydoc_data.topics.topics`` maps 79 help topics to the text of the Python language
reference (about 465k characters). We keep prose paragraphs (unwrapped, no code blocks,
tables or heading underlines) and split topics deterministically into a ``train`` part
and a ``heldout`` part (every fifth paragraph) so that calibration and
evaluation use different paragraphs. pydoc repeats some paragraphs across topics (78 of the 237 distinct held-out
ones also occur among the train paragraphs), so the two splits do share those. The ``pydoc-cloze`` task
therefore splits the distinct paragraphs instead (:func:`workbench.tasks.cloze.cloze_paragraphs`), so that its
calibration and evaluation questions never share text.
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


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    """Token ids of ``text`` with or without the tokenizer's special tokens, as a flat list. A minimal
    tokenizer whose call takes no ``add_special_tokens`` is taken to add none."""
    try:
        enc = tokenizer(text, add_special_tokens=special)
    except TypeError:
        enc = tokenizer(text)
    ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc.input_ids
    return torch.as_tensor(ids).reshape(-1).tolist()


def start_ids(tokenizer) -> list[int]:
    """The special ids the tokenizer puts in front of a text (e.g. Gemma's ``<bos>``); [] when it adds none.

    Found by tokenising a short probe with and without special tokens, so it follows what the tokenizer
    really does (SmolLM2's adds nothing although it names a BOS token; Gemma-3's adds ``<bos>``).
    """
    with_special, without = _ids(tokenizer, "The", True), _ids(tokenizer, "The", False)
    for k in range(len(with_special) - len(without) + 1):
        if with_special[k: k + len(without)] == without:
            return with_special[:k]
    return []


def window_start(tokenizer, prefix_ids: list[int] | None = None) -> dict:
    """What every text window starts with, for reports: ``{"start_ids": [...], "start_tokens": [...], "rule": str}``.

    Args:
        prefix_ids: the prefix used (default :func:`start_ids` of the tokenizer, as :func:`token_windows` does).
    """
    ids = start_ids(tokenizer) if prefix_ids is None else list(prefix_ids)
    toks = tokenizer.convert_ids_to_tokens(ids) if ids else []
    rule = (f"every window starts with {' '.join(toks)} (id {', '.join(map(str, ids))}), the start-of-text token "
            "the tokenizer puts before a text" if ids else
            "windows start mid-text: the tokenizer adds no start-of-text token")
    return {"start_ids": ids, "start_tokens": toks, "rule": rule}


def token_windows(tokenizer, n_tokens: int, n_samples: int, split: str = "all", stride: int | None = None,
                  prefix_ids: list[int] | None = None) -> torch.Tensor:
    """Consecutive windows of the tokenised prose, each starting as a text given to the model would.

    Args:
        tokenizer: a Hugging Face tokenizer.
        n_tokens: tokens per window (including the prefix).
        n_samples: number of windows.
        split: text split (see :func:`prose_paragraphs`).
        stride: tokens between window starts in the prose (default ``n_tokens`` minus the prefix, i.e.
            disjoint windows).
        prefix_ids: ids put in front of every window. Default: :func:`start_ids`, the start-of-text token(s)
            the tokenizer adds to a text (Gemma's ``<bos>``; nothing for SmolLM2), so that every window,
            not only the first, starts with it; ``[]`` for none.
    Returns:
        (n_samples, n_tokens) int64 ids.
    Raises:
        ValueError: the text is too short for that many windows, or the prefix fills the window.
    """
    prefix = start_ids(tokenizer) if prefix_ids is None else list(prefix_ids)
    body = n_tokens - len(prefix)
    if body < 1:
        raise ValueError(f"windows of {n_tokens} tokens leave no room for text after the {len(prefix)}-token prefix")
    stride = stride or body
    ids = torch.tensor(_ids(tokenizer, prose_text(split), False), dtype=torch.long)
    need = (n_samples - 1) * stride + body
    if need > ids.numel():
        raise ValueError(
            f"the {split!r} prose has {ids.numel()} tokens, too few for {n_samples} windows of {n_tokens} "
            f"with stride {stride}: ask for fewer or shorter samples"
        )
    rows = [torch.cat([torch.tensor(prefix, dtype=torch.long), ids[i * stride: i * stride + body]]) for i in range(n_samples)]
    return torch.stack(rows)
