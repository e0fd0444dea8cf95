"""Answering a digit-image question under a hallucination intervention (:mod:`workbench.tasks.hallucination`):
the methods (``none``, ``vhr``, ``var``) and their parameters, the intervention as a context manager, the
greedy answer, and reading yes/no and digits from it."""
from __future__ import annotations

import re

import torch

from ..core.errors import WorkbenchError
from ..core.models import LoadedModel

METHODS = ("none", "vhr", "var")
SPLITS = ("random", "popular", "adversarial")


class UnknownMethodError(WorkbenchError):
    """A hallucination-mitigation method or POPE split name that does not exist."""


def check_method(method: str, split: str | None = None) -> None:
    if method not in METHODS:
        raise UnknownMethodError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if split is not None and split not in SPLITS:
        raise UnknownMethodError(f"unknown POPE split {split!r}: use one of {', '.join(SPLITS)}")


def _sink_dims(lm: LoadedModel) -> list[int]:
    if "sink_dims" not in lm.extras:
        from ..analyzers.vision import sink_dimensions

        lm.extras["sink_dims"] = sink_dimensions(lm)[0]
    return lm.extras["sink_dims"]


def method_params(method: str, params: dict | None = None) -> dict:
    """The parameters of ``method`` (its defaults updated by ``params``): VHR ``alpha`` (2); VAR ``p`` (0.6),
    ``summ`` (0.2), ``rho`` (0.5), ``tau`` (20); none: {}.

    Raises:
        UnknownMethodError: unknown method. WorkbenchError: a parameter the method does not have.
    """
    from ..interventions import var as V
    from ..interventions import vhr as R
    from ..analyzers.vision import TAU

    check_method(method)
    defaults = {"none": {}, "vhr": {"alpha": R.ALPHA}, "var": {"p": V.P, "summ": V.SUMM, "rho": V.RHO, "tau": TAU}}[method]
    extra = set(params or {}) - set(defaults)
    if extra:
        raise WorkbenchError(f"method {method} has no parameter {sorted(extra)[0]!r}: it takes "
                             f"{', '.join(defaults) or 'no parameters'}")
    return {**defaults, **{k: float(v) for k, v in (params or {}).items()}}


def intervention(lm: LoadedModel, inp, method: str, params: dict | None = None):
    """The context manager applying ``method`` (with :func:`method_params`) to one input (``none``: a no-op)."""
    import contextlib

    kw = method_params(method, params)
    if method == "none":
        return contextlib.nullcontext()
    from ..interventions.registry import build_intervention

    return build_intervention(method, lm, inp=inp, **kw).applied()  # "vhr" / "var" from the one registry


@torch.no_grad()
def answer(lm: LoadedModel, inp, method: str = "none", max_new_tokens: int = 1, params: dict | None = None) -> str:
    """Greedy answer text of one input under ``method`` (stops at a newline)."""
    with intervention(lm, inp, method, params):
        if max_new_tokens == 1:
            logits = lm.model(input_ids=inp.input_ids, use_cache=False, **inp.kwargs()).logits[0, -1]
            return lm.tokenizer.decode(int(logits.argmax()))
        out = lm.model.generate(input_ids=inp.input_ids, attention_mask=torch.ones_like(inp.input_ids),
                                max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id, **inp.kwargs())
    return lm.tokenizer.decode(out[0, inp.input_ids.shape[1]:]).split("\n")[0]


def is_yes(text: str) -> bool:
    return text.strip().lower().startswith("yes")


def mentioned_digits(text: str) -> list[int]:
    """Digits mentioned in an answer, in order, without repeats."""
    out: list[int] = []
    for m in re.findall(r"\d", text):
        if int(m) not in out:
            out.append(int(m))
    return out
