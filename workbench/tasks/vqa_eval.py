"""Does ``effnet-smollm2-vqa`` read the image? easy-VQA accuracy with the image, a blank image and none.

* **yes/no**: the first answer token's logits, `` yes`` against `` no`` (no generation); the
  prediction is yes when logit(`` yes``) > logit(`` no``). Accuracy and yes-ratio.
* **open** (shape and colour questions, one-word answers): the first answer token's argmax over the
  whole vocabulary must be the answer's first token (the 11 answer words have distinct first tokens;
  all but `` teal`` = `` te`` + ``al`` are one token), i.e. greedy decoding starts the right word.
* conditions: ``image`` (the easy-VQA image), ``blank image`` (a white image), ``no image`` (the
  prompt without image tokens, as in :func:`workbench.core.vlm.text_only`).

The image's prefix ``Image: <image>*49\\nQuestion:`` is run once per image and its KV cache shared by
the image's questions (``tests/test_effnet_vlm.py`` checks that this equals one full pass per
question). Without an image the answer depends on the question text alone, so each distinct
question is asked once (exact, and far cheaper on the 7,136 yes/no test questions).
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..demo import easyvqa as V
from ..demo.effnet_vlm import IMAGE_TOKEN, N_IMAGE_TOKENS, prompt_text
from ..core.models import LoadedModel

PREFIX = "Image: {img}\nQuestion:"
CONDITIONS = ("image", "blank image", "no image")


def _split_prompt(tok, question: str, n_image_tokens: int) -> tuple[list[int], list[int]]:
    full = tok(prompt_text(question, n_image_tokens)).input_ids
    pre = tok(PREFIX.format(img=IMAGE_TOKEN * n_image_tokens)).input_ids
    if full[: len(pre)] != pre:
        raise RuntimeError(f"prefix tokenisation differs for {question!r}")
    return pre, full[len(pre):]


def answer_token_ids(tok) -> dict[str, int]:
    """First token id of every easy-VQA answer word with its leading space (`` yes``, `` circle``...)."""
    out = {}
    for a in V.SHAPES + V.COLORS + (V.YES, V.NO):
        ids = tok(" " + a, add_special_tokens=False).input_ids
        out[a] = ids[0]
    return out


@torch.no_grad()
def first_token_logits(lm: LoadedModel, pixels: torch.Tensor | None, questions: Sequence[str]) -> torch.Tensor:
    """Logits (len(questions), vocab) of the first answer token of each question about one image.

    ``pixels`` (3, 224, 224) or None (prompt without image tokens). With an image the prefix runs
    once and its KV cache is repeated for the questions (right-padded suffixes; causal attention,
    so padding after a row's last token changes nothing before it).
    """
    tok, model = lm.tokenizer, lm.model
    n = 0 if pixels is None else N_IMAGE_TOKENS
    parts = [_split_prompt(tok, q, n) for q in questions]
    pre = torch.tensor([parts[0][0]])
    kw = {} if pixels is None else {"pixel_values": pixels[None]}
    out = model(input_ids=pre, use_cache=True, **kw)
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_repeat_interleave(len(questions))
    t = max(len(s) for _, s in parts)
    ids = torch.full((len(questions), t), tok.pad_token_id or 0, dtype=torch.long)
    for r, (_, s) in enumerate(parts):
        ids[r, : len(s)] = torch.tensor(s)
    logits = model(input_ids=ids, cache=cache, use_cache=True).logits
    last = torch.tensor([len(s) - 1 for _, s in parts])
    return logits[torch.arange(len(questions)), last].float()


def score(tok, logits: torch.Tensor, answers: Sequence[str]) -> pd.DataFrame:
    """Per question: kind (yesno/open), pred, correct, p_yes margin."""
    ids = answer_token_ids(tok)
    first = {v: k for k, v in ids.items()}
    rows = []
    for r, a in enumerate(answers):
        if V.is_yesno(a):
            margin = float(logits[r, ids[V.YES]] - logits[r, ids[V.NO]])
            pred = V.YES if margin > 0 else V.NO
            rows.append(("yesno", pred, pred == a, margin))
        else:
            top = int(logits[r].argmax())
            pred = first.get(top, tok.decode(top).strip())
            rows.append(("open", pred, pred == a, float("nan")))
    return pd.DataFrame(rows, columns=["kind", "pred", "correct", "yes_margin"])


def image_ablation(lm: LoadedModel, split: str = "test", n_images: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Every question of the first ``n_images`` images (all when None) of an easy-VQA split under the
    three :data:`CONDITIONS`. Returns DataFrame (condition, image, question, answer, kind, pred, correct, yes_margin)."""
    qs = V.questions(split)
    ids = sorted({i for _, _, i in qs})
    if n_images is not None:
        ids = ids[:n_images]
    keep = set(ids)
    by_img: dict[int, list[tuple[str, str]]] = {}
    for q, a, i in qs:
        if i in keep:
            by_img.setdefault(i, []).append((q, a))
    frames = []
    for i in tqdm(ids, desc="easy-VQA (image)", disable=not progress):
        q, a = zip(*by_img[i])
        df = score(lm.tokenizer, first_token_logits(lm, V.image_pixels(split, i), q), a)
        frames.append(df.assign(condition="image", image=i, question=list(q), answer=list(a)))
    distinct = sorted({q for i in ids for q, _ in by_img[i]})
    for cond, px in (("blank image", V.blank_pixels()), ("no image", None)):
        logit_of = {}
        for k in tqdm(range(0, len(distinct), 16), desc=f"easy-VQA ({cond})", disable=not progress):
            chunk = distinct[k:k + 16]
            if px is None:
                for q, row in zip(chunk, _no_image_logits(lm, chunk)):
                    logit_of[q] = row
            else:
                for q, row in zip(chunk, first_token_logits(lm, px, chunk)):
                    logit_of[q] = row
        for i in ids:
            q, a = zip(*by_img[i])
            df = score(lm.tokenizer, torch.stack([logit_of[x] for x in q]), a)
            frames.append(df.assign(condition=cond, image=i, question=list(q), answer=list(a)))
    return pd.concat(frames, ignore_index=True)[["condition", "image", "question", "answer", "kind", "pred", "correct",
                                                 "yes_margin"]]


@torch.no_grad()
def _no_image_logits(lm: LoadedModel, questions: Sequence[str]) -> torch.Tensor:
    tok = lm.tokenizer
    rows = [tok(prompt_text(q, 0)).input_ids for q in questions]
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), tok.pad_token_id or 0, dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, : len(r)] = torch.tensor(r)
    logits = lm.model(input_ids=ids, use_cache=False).logits
    return logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])].float()


def summary(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Accuracy per condition and kind with 95% bootstrap intervals (:func:`workbench.core.intervals.bootstrap_ci`,
    resampling images), yes-ratio of the yes/no questions. DataFrame (condition, kind, n, accuracy,
    ci_low, ci_high, yes_ratio)."""
    from ..core.intervals import bootstrap_ci

    rows = []
    for (cond, kind), g in df.groupby(["condition", "kind"], sort=False):
        per = g.groupby("image")["correct"].agg(["sum", "count"])
        s, c = per["sum"].to_numpy(float), per["count"].to_numpy(float)
        if len(per) > 1:
            lo, hi = bootstrap_ci(len(per), lambda i: s[i].sum() / c[i].sum(), n_boot, 0.95, seed)
        else:
            lo = hi = float("nan")
        yes = float((g.pred == V.YES).mean()) if kind == "yesno" else float("nan")
        rows.append((cond, kind, len(g), float(g.correct.mean()), lo, hi, yes))
    return pd.DataFrame(rows, columns=["condition", "kind", "n", "accuracy", "ci_low", "ci_high", "yes_ratio"])
