"""Tokens and numbers as people read them: readable token strings (byte-level BPE and SentencePiece
decoded, whitespace made visible), token tables, heads written ``layer.head`` and numbers for a page."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

VISIBLE_WHITESPACE = {" ": "·", "\n": "⏎", "\t": "⇥", "\r": "␍"}


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet inverted: printable stand-in character -> byte (``Ġ`` -> 0x20)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _byte_decoder()


def readable_token(raw: str) -> str:
    """One tokenizer token (its vocabulary string) as a reader sees it, whitespace made visible.

    Byte-level BPE strings (GPT-2, Llama 3, SmolLM2: ``Ġ`` = space, ``Ċ`` = newline) are mapped back
    to their bytes and decoded as UTF-8 (a byte that is only part of a character is shown as ``\\xe6``);
    SentencePiece's ``▁`` is a space and its byte tokens ``<0x0A>`` are their byte. Then a space is
    shown as ``·``, a newline as ``⏎``, a tab as ``⇥`` (:data:`VISIBLE_WHITESPACE`); an empty token as ``∅``.
    Special tokens (``<|im_start|>``) are kept as they are.
    """
    s = str(raw)
    if len(s) == 6 and s.startswith("<0x") and s.endswith(">"):
        try:
            s = bytes([int(s[3:5], 16)]).decode("utf-8", errors="backslashreplace")
        except ValueError:
            pass
    elif not (s.startswith("<") and s.endswith(">")) and s and all(c in _BYTE_DECODER for c in s) \
            and any(ord(c) > 127 for c in s):
        s = bytes(_BYTE_DECODER[c] for c in s).decode("utf-8", errors="backslashreplace")
    return visible_whitespace(s.replace("▁", " "))


def visible_whitespace(text: str) -> str:
    """Decoded text with its whitespace made visible (:data:`VISIBLE_WHITESPACE`); ``∅`` for empty text."""
    s = str(text)
    for k, v in VISIBLE_WHITESPACE.items():
        s = s.replace(k, v)
    return s if s else "∅"


def display_tokens(tokenizer, ids) -> list[str]:
    """Token ids (a sequence or 1-D tensor) as readable strings for labels (:func:`readable_token`).

    ``tokenizer`` is any object with ``convert_ids_to_tokens`` (a Hugging Face tokenizer), or None
    (then the ids themselves are shown). The raw ids are never replaced in data, only in display.
    """
    ids = [int(i) for i in (ids.reshape(-1).tolist() if hasattr(ids, "reshape") else ids)]
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    if convert is None:
        return [str(i) for i in ids]
    return [readable_token(t) for t in convert(ids)]


def display_token_strings(raw_tokens: Sequence[str] | None) -> list[str] | None:
    """:func:`readable_token` of each raw vocabulary string (e.g. a saved trace's ``token_strings``)."""
    return None if raw_tokens is None else [readable_token(t) for t in raw_tokens]


def token_table(tokenizer, ids) -> pd.DataFrame:
    """A display table of a token sequence: ``pos``, ``id`` (raw, for data), ``token`` (readable)."""
    ids = [int(i) for i in (ids.reshape(-1).tolist() if hasattr(ids, "reshape") else ids)]
    return pd.DataFrame({"pos": range(len(ids)), "id": ids, "token": display_tokens(tokenizer, ids)})


def format_head(layer: int, head: int) -> str:
    """A head written the way the CLI flags and the dashboard take it: ``layer.head`` (``16.0``)."""
    return f"{int(layer)}.{int(head)}"


def format_number(x, digits: int = 4) -> str:
    """A number for a page: ``digits`` significant digits, scientific notation from 1e5 up or below 1e-3
    (a perplexity of 7484689.5 is ``7.48e+06``), integers as integers."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not np.isfinite(v):
        return str(v)
    if float(v).is_integer() and abs(v) < 1e5:
        return str(int(v))
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{max(0, digits - 2)}e}"
    return f"{v:.{digits}g}"
