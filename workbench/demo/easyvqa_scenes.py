"""Scenes of 2-4 easy-VQA images in a 2 x 2 grid, drawn with skewed class frequencies and partner classes so
that POPE's popular and adversarial negatives mean something; their captions, questions, POPE items and
the objects a generated text mentions."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .easyvqa_data import CLASSES, COLORS, NO, SHAPES, YES, image_array, image_labels, to_pixels

CELL = 64
GRID = 2
P_PARTNER = 0.5
CAPTION_QUESTION = "Describe the image."
POPE_QUESTION = "Is there a {obj} in the image?"

def object_name(color: str, shape: str | None = None) -> str:
    """``red circle`` (colour and shape), or the shape alone (``circle``) when ``color`` is None."""
    return shape if color is None else f"{color} {shape}"


@lru_cache(maxsize=1)
def popularity() -> np.ndarray:
    """Relative frequency (24,) of each class of :data:`CLASSES` as a scene's first object (fixed, seeded)."""
    w = np.random.default_rng(15).gamma(0.7, size=len(CLASSES)) + 0.05
    return w / w.sum()


@lru_cache(maxsize=1)
def partners() -> np.ndarray:
    """Partner class (24,) of each class: a random derangement (fixed, seeded)."""
    rng = np.random.default_rng(16)
    while True:
        p = rng.permutation(len(CLASSES))
        if not (p == np.arange(len(CLASSES))).any():
            return p


@lru_cache(maxsize=2)
def _by_class(split: str) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {k: [] for k in range(len(CLASSES))}
    for i, (c, s) in image_labels(split).items():
        if c is not None and s is not None:
            out[CLASSES.index((c, s))].append(i)
    return out


def draw_classes(rng: np.random.Generator, n: int) -> list[int]:
    """``n`` distinct classes: the first by :func:`popularity`, each next one the previous one's
    partner with probability :data:`P_PARTNER` (if not taken), else by popularity among the rest."""
    pop = popularity()
    out: list[int] = []
    while len(out) < n:
        if out and rng.random() < P_PARTNER and int(partners()[out[-1]]) not in out:
            out.append(int(partners()[out[-1]]))
            continue
        w = pop.copy()
        w[out] = 0
        out.append(int(rng.choice(len(CLASSES), p=w / w.sum())))
    return out


@dataclass
class Scene:
    """A 2 x 2 grid of easy-VQA images of one split.

    Attributes:
        split: ``train`` or ``test`` (where its images come from).
        cells: per cell in reading order, the easy-VQA image id or -1 (empty).
        classes: per cell, the index into :data:`CLASSES` or -1.
    """

    split: str
    cells: list[int]
    classes: list[int]

    @property
    def objects(self) -> list[tuple[str, str]]:
        """(colour, shape) of the objects in reading order."""
        return [CLASSES[k] for k in self.classes if k >= 0]

    def rgb(self) -> np.ndarray:
        """uint8 (128, 128, 3)."""
        out = np.full((GRID * CELL, GRID * CELL, 3), 255, dtype=np.uint8)
        for j, i in enumerate(self.cells):
            if i >= 0:
                r, c = divmod(j, GRID)
                out[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = image_array(self.split, i)
        return out

    def pixels(self) -> torch.Tensor:
        """Tower input (3, 224, 224)."""
        return to_pixels(self.rgb())

    def caption(self) -> str:
        """``a red circle, a blue triangle and a gray rectangle`` (reading order)."""
        names = [f"a {c} {s}" for c, s in self.objects]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def make_scene(rng: np.random.Generator, split: str) -> Scene:
    """A scene of 2-4 objects (see module docstring), deterministic in ``rng``."""
    n = int(rng.integers(2, GRID * GRID + 1))
    ks = draw_classes(rng, n)
    where = sorted(rng.choice(GRID * GRID, size=n, replace=False).tolist())
    cells, classes = [-1] * (GRID * GRID), [-1] * (GRID * GRID)
    pool = _by_class(split)
    for pos, k in zip(where, ks):
        cells[pos] = int(rng.choice(pool[k]))
        classes[pos] = k
    return Scene(split, cells, classes)


def scenes(split: str, n: int, seed: int) -> list[Scene]:
    """``n`` scenes of ``split`` from one seeded generator."""
    rng = np.random.default_rng(seed)
    return [make_scene(rng, split) for _ in range(n)]


def scene_objects(scene: Scene) -> set[str]:
    """The POPE objects present: shape-colour pairs (``red circle``) and shapes (``circle``)."""
    out = {object_name(c, s) for c, s in scene.objects}
    return out | {s for _, s in scene.objects}


ALL_OBJECTS = tuple(object_name(c, s) for c, s in CLASSES) + SHAPES


@lru_cache(maxsize=4)
def training_stats(n: int = 20000, seed: int = 0) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Object frequency and co-occurrence counts over ``n`` train scenes' object sets (class draws only)."""
    rng = np.random.default_rng(seed)
    freq: dict[str, float] = {o: 0.0 for o in ALL_OBJECTS}
    co: dict[tuple[str, str], float] = {}
    for _ in range(n):
        ks = draw_classes(rng, int(rng.integers(2, GRID * GRID + 1)))
        objs = {object_name(*CLASSES[k]) for k in ks} | {CLASSES[k][1] for k in ks}
        for a in objs:
            freq[a] += 1
            for b in objs:
                if a != b:
                    co[(a, b)] = co.get((a, b), 0.0) + 1
    return freq, co


def scene_questions(rng: np.random.Generator, scene: Scene) -> list[tuple[str, str]]:
    """Training questions of a scene: the caption, and one present and one absent object (yes/no)."""
    present = sorted(scene_objects(scene))
    absent = [o for o in ALL_OBJECTS if o not in present]
    out = [(CAPTION_QUESTION, scene.caption())]
    out.append((POPE_QUESTION.format(obj=present[int(rng.integers(len(present)))]), YES))
    out.append((POPE_QUESTION.format(obj=absent[int(rng.integers(len(absent)))]), NO))
    return out


def pope_items(scene_list: list[Scene], seed: int = 0) -> "pd.DataFrame":
    """POPE questions on scenes: DataFrame (image, split, object, label), one positive and one negative
    per scene and split (negatives: random / popular / adversarial, see module docstring). Objects are
    shape-colour pairs; a shape alone when the scene lacks one of the three shapes and the draw picks it."""
    import pandas as pd

    freq, co = training_stats()
    rng = np.random.default_rng(seed)
    rows = []
    for i, sc in enumerate(scene_list):
        present = sorted(scene_objects(sc))
        absent = [o for o in ALL_OBJECTS if o not in present]
        pos = present[int(rng.integers(len(present)))]
        neg = {"random": absent[int(rng.integers(len(absent)))],
               "popular": max(absent, key=lambda o: (freq[o], o)),
               "adversarial": max(absent, key=lambda o: (sum(co.get((p, o), 0.0) for p in present), freq[o], o))}
        for split in ("random", "popular", "adversarial"):
            rows.append((i, split, pos, True))
            rows.append((i, split, neg[split], False))
    return pd.DataFrame(rows, columns=["image", "split", "object", "label"])


def mentioned_objects(text: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs a caption mentions, in order, without repeats; a shape without a known
    colour counts as (None, shape)."""
    out: list[tuple[str, str]] = []
    words = re.findall(r"[a-z]+", text.lower())
    for j, w in enumerate(words):
        if w in SHAPES:
            c = words[j - 1] if j and words[j - 1] in COLORS else None
            if (c, w) not in out:
                out.append((c, w))
    return out
