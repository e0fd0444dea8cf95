"""Interventions on attention heads at inference, applied inside the kernel-backed attention.

An intervention is an :class:`~workbench.core.attention.AttentionHook` that returns a replacement
head output ``z`` (B, Hq, Nq, D) for chosen (layer, head) pairs. Use them as context managers::

    with HeadAblation([(3, 1), (7, 4)], kind="zero").applied():
        lm.model.generate(ids, max_new_tokens=20)
"""
from .ablation import HeadAblation
from .base import HeadIntervention

__all__ = ["HeadAblation", "HeadIntervention"]
