"""Needle-in-a-haystack prompts: haystacks of real text, needles, depths, and the answer span.

A test (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality", after
Kamradt's needle-in-a-haystack) puts a *needle* sentence into a *haystack* of real text at a
*depth* (0 = start, 100 = end, in percent of the haystack), wraps haystack and question in the
model's chat template, and asks the model to answer. The prompt has a target length in tokens.

The *answer span* is the run of context tokens that spell the needle's answer. Tokenisation of
the answer inside the needle differs from its standalone tokenisation (leading spaces, merges with
neighbours), so we locate it by character offsets: we know where the answer's characters are in
the prompt string, and the fast tokenizer's offset mapping tells which tokens cover them. When the
tokenizer gives no offsets we fall back to searching the token sequence for the standalone
tokenisations of the answer; if neither works we raise :class:`NeedleNotFoundError` rather than
return an empty span.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..core.errors import NeedleNotFoundError, WorkbenchError


@dataclass(frozen=True)
class Needle:
    """A needle: the sentence inserted into the haystack, the question, and the answer.

    ``answer`` must occur verbatim in ``sentence`` and should not occur in the haystack.
    """

    name: str
    sentence: str
    question: str
    answer: str


# Written for this project: invented facts, so the haystack (Python's reference manual) cannot
# contain the answers and the model cannot know them.
NEEDLES: tuple[Needle, ...] = (
    Needle("tallinford", "The best thing to do in Tallinford is to ride the copper tram down to the harbour at sunset.",
           "What is the best thing to do in Tallinford?", "ride the copper tram down to the harbour at sunset"),
    Needle("marlow-soup", "The secret ingredient in Captain Marlow's famous soup is roasted blue pumpkin with wild thyme.",
           "What is the secret ingredient in Captain Marlow's famous soup?", "roasted blue pumpkin with wild thyme"),
    Needle("voss-key", "Professor Elna Voss hid the museum key inside a green teapot on the library shelf.",
           "Where did Professor Elna Voss hide the museum key?", "inside a green teapot on the library shelf"),
    Needle("quill-otter", "The lighthouse keeper on Quill Island has a pet otter named Captain Biscuit Jones.",
           "What is the name of the pet otter of the lighthouse keeper on Quill Island?", "Captain Biscuit Jones"),
    Needle("brindlewood-kites", "The kite festival in Brindlewood is always held on the first sunny Sunday of October.",
           "When is the kite festival in Brindlewood held?", "the first sunny Sunday of October"),
    Needle("orla-train", "The night train from Orla to Kestrin carries forty crates of lavender honey every week.",
           "What does the night train from Orla to Kestrin carry every week?", "forty crates of lavender honey"),
)

# The needle grid every retrieval command runs by default (`workbench retrieval`, `ablate`, `masking-test` and their
# Python calls), so heads are masked on the grid they were found on. On SmolLM2-135M 25-26 heads pass 0.1 at
# 256-512 tokens (verbatim copying), 21-22 at 1024-2048 and 9 at 4096, the longest band it answers; from 1024 on
# the top-10 shares 8/10 with 4096's (README, "Retrieval heads").
DEFAULT_LENGTHS = (1024, 2048, 4096)  # context lengths in tokens
DEFAULT_DEPTHS = (0, 20, 40, 60, 80, 100)  # needle depths in percent of the haystack


PROMPT_TEMPLATE = ("{haystack}\n\nBased on the text above, answer the question in one sentence.\n"
                   "Question: {question}\nAnswer:")


def load_needles(path: str | Path | None = None) -> tuple[Needle, ...]:
    """The built-in needles, or needles from a JSON Lines file with keys name, sentence, question, answer.

    Raises:
        WorkbenchError: the file is missing, malformed, or an answer is not inside its sentence.
    """
    if path is None:
        return NEEDLES
    from ..io.files import read_text_file

    p = Path(path)
    keys = ("name", "sentence", "question", "answer")
    out = []
    for i, line in enumerate(read_text_file(p, "needle file").splitlines()):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as err:
            raise WorkbenchError(f"{p} line {i + 1} is not valid JSON ({err.msg}): each line is one JSON object "
                                 "with sentence, question, answer") from None
        if not isinstance(d, dict):
            raise WorkbenchError(f"{p} line {i + 1} is not a JSON object: each line needs sentence, question, answer")
        unknown = sorted(set(d) - set(keys))
        if unknown:
            raise WorkbenchError(f"{p} line {i + 1} has unknown keys {unknown}: a needle has only {', '.join(keys)}")
        for k in keys[1:]:
            if not isinstance(d.get(k), str) or not d[k].strip():
                raise WorkbenchError(f"{p} line {i + 1}: `{k}` must be a non-empty string (got {type(d.get(k)).__name__})")
        n = Needle(str(d.get("name", f"needle{i}")), d["sentence"], d["question"], d["answer"])
        if n.answer not in n.sentence:
            raise WorkbenchError(f"{p} line {i + 1}: the answer {n.answer!r} is not part of the needle sentence")
        out.append(n)
    if not out:
        raise WorkbenchError(f"{p} has no needles")
    return tuple(out)


def default_haystack() -> str:
    """The English prose of ``pydoc_data.topics`` (ships with Python), paragraphs joined by blank lines."""
    from .text import prose_text

    return prose_text("all")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def sentence_boundaries(text: str) -> list[int]:
    """Character offsets where a sentence starts: 0, every start after ``. ``/``! ``/``? ``, and len(text)."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    return [0] + cuts + [len(text)]


@dataclass
class NeedlePrompt:
    """One needle-in-a-haystack test prompt.

    Attributes:
        ids: (1, N) int64 prompt token ids (chat template applied when the tokenizer has one).
        text: the prompt string the ids were tokenised from.
        answer_span: (start, stop) token positions of the answer inside the needle, stop exclusive.
        needle_span: (start, stop) token positions of the whole needle sentence.
        depth: requested depth in percent; ``actual_depth``: where the needle landed, in percent of the haystack.
        length: requested length in tokens; ``ids.shape[1]`` is the actual one.
    """

    ids: torch.Tensor
    text: str
    needle: Needle
    length: int
    depth: float
    actual_depth: float
    answer_span: tuple[int, int]
    needle_span: tuple[int, int]

    def meta(self) -> dict:
        return {"length": self.length, "n_tokens": int(self.ids.shape[1]), "depth": self.depth,
                "actual_depth": round(self.actual_depth, 2), "needle": self.needle.name,
                "answer_span": list(self.answer_span), "needle_span": list(self.needle_span)}


def _wrap(tokenizer, content: str, chat: bool) -> str:
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
    return content


def _tokenize(tokenizer, text: str, chat: bool) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Ids of the prompt string (special tokens come from the template text itself) and char offsets."""
    add_special = not (chat and getattr(tokenizer, "chat_template", None))
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"]), None


def char_span_to_tokens(offsets: list[tuple[int, int]], start: int, stop: int) -> tuple[int, int]:
    """Token positions (first, last + 1) whose character spans overlap ``[start, stop)``.

    Raises:
        NeedleNotFoundError: no token overlaps the characters.
    """
    hit = [i for i, (a, b) in enumerate(offsets) if b > a and a < stop and b > start]
    if not hit:
        raise NeedleNotFoundError(f"no token covers characters {start}..{stop} of the prompt: the tokenizer's "
                                  "offset mapping is empty there; use a fast tokenizer or another needle")
    return hit[0], hit[-1] + 1


def find_token_span(ids: list[int], tokenizer, answer: str, start_hint: int = 0) -> tuple[int, int]:
    """Fallback without offsets: search ``ids`` for a tokenisation of ``answer``.

    Tries the standalone tokenisation and the one with a leading space (how a word inside a sentence
    is usually tokenised), first at or after ``start_hint``.

    Raises:
        NeedleNotFoundError: no variant occurs in ids.
    """
    variants = []
    for v in (" " + answer, answer):
        t = list(tokenizer(v, add_special_tokens=False)["input_ids"])
        if t and t not in variants:
            variants.append(t)
    for lo in (start_hint, 0):
        for t in variants:
            for i in range(lo, len(ids) - len(t) + 1):
                if ids[i: i + len(t)] == t:
                    return i, i + len(t)
    raise NeedleNotFoundError(f"the answer {answer!r} does not occur in the tokenised prompt under any of its "
                              "tokenisations: use a fast tokenizer (offset mapping) or a needle whose answer "
                              "is whole words")


def locate_answer(ids: list[int], offsets: list[tuple[int, int]] | None, tokenizer, text: str, needle: Needle,
                  needle_char: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Token spans of the answer and of the whole needle sentence, which starts at ``needle_char``.

    Raises:
        NeedleNotFoundError: the needle or its answer is not in ``text`` or cannot be mapped to tokens.
    """
    if text[needle_char: needle_char + len(needle.sentence)] != needle.sentence:
        raise NeedleNotFoundError(f"needle {needle.name!r} is not at character {needle_char} of the prompt")
    a_in = needle.sentence.find(needle.answer)
    if a_in < 0:
        raise NeedleNotFoundError(f"the answer {needle.answer!r} is not part of the needle sentence {needle.name!r}")
    a0 = needle_char + a_in
    a1 = a0 + len(needle.answer)
    if offsets is not None:
        ans = char_span_to_tokens(offsets, a0, a1)
        ndl = char_span_to_tokens(offsets, needle_char, needle_char + len(needle.sentence))
        return ans, ndl
    ans = find_token_span(ids, tokenizer, needle.answer)
    ndl = find_token_span(ids, tokenizer, needle.sentence)
    return ans, ndl


@lru_cache(maxsize=4)
def _haystack_tokens(tokenizer, haystack: str) -> tuple[list[int], list[int]]:
    """Character end offset of every haystack token (for cutting the haystack at a token budget)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(haystack, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [b for _, b in enc["offset_mapping"]]
    ids = list(tokenizer(haystack, add_special_tokens=False)["input_ids"])
    # rough offsets: proportional (only used to cut the haystack; the length is corrected below)
    return ids, [int(len(haystack) * (i + 1) / len(ids)) for i in range(len(ids))]


def build_prompt(tokenizer, needle: Needle, length: int, depth: float, haystack: str | None = None,
                 chat: bool = True, template: str = PROMPT_TEMPLATE) -> NeedlePrompt:
    """A needle-in-a-haystack prompt of about ``length`` tokens with the needle at ``depth`` percent.

    The haystack is cut to fill the token budget left after the template, question and needle,
    then the needle is inserted at the sentence boundary nearest to ``depth`` percent of the cut
    haystack (0 puts it first, 100 last). The final length can differ from ``length`` by a few
    tokens where the tokenizer merges across the cut; ``ids.shape[1]`` is exact.

    Raises:
        WorkbenchError: depth outside 0..100, or the haystack is too short for the length.
        NeedleNotFoundError: the answer span cannot be located in the tokenised prompt.
    """
    if not 0 <= depth <= 100:
        raise WorkbenchError(f"depth {depth} is outside 0..100 (percent of the haystack)")
    haystack = default_haystack() if haystack is None else haystack
    h_ids, h_ends = _haystack_tokens(tokenizer, haystack)
    bare = _wrap(tokenizer, template.format(haystack=needle.sentence, question=needle.question), chat)
    overhead = len(_tokenize(tokenizer, bare, chat)[0]) + 2
    budget = length - overhead
    if budget < 1:
        raise WorkbenchError(f"length {length} is too short: the template, needle and question alone take "
                             f"{overhead} tokens")
    if budget > len(h_ids):
        raise WorkbenchError(f"the haystack has {len(h_ids)} tokens, too few for a {length}-token prompt: "
                             "give a longer haystack file or a shorter length")
    for _ in range(4):  # correct the cut for merges at the boundaries
        cut = h_ends[budget - 1]
        hay = haystack[:cut]
        bounds = sentence_boundaries(hay)
        target = depth / 100 * len(hay)
        pos = min(bounds, key=lambda b: abs(b - target))
        if pos == 0:
            filled = needle.sentence + " " + hay
            n_char = 0
        elif pos >= len(hay):
            filled = hay.rstrip() + " " + needle.sentence
            n_char = len(hay.rstrip()) + 1
        else:
            filled = hay[:pos] + needle.sentence + " " + hay[pos:]
            n_char = pos
        content = template.format(haystack=filled, question=needle.question)
        text = _wrap(tokenizer, content, chat)
        ids, offsets = _tokenize(tokenizer, text, chat)
        diff = len(ids) - length
        if diff == 0 or budget - diff < 1:
            break
        budget -= diff
    needle_char = text.index(content) + n_char
    ans, ndl = locate_answer(ids, offsets, tokenizer, text, needle, needle_char)
    return NeedlePrompt(torch.tensor([ids], dtype=torch.long), text, needle, length, depth,
                        100.0 * pos / max(1, len(hay)), ans, ndl)


def needle_dict(n: Needle) -> dict:
    return asdict(n)

