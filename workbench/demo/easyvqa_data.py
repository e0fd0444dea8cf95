"""easy-VQA's own images and questions (files inside the ``easy-vqa`` wheel; nothing is downloaded): the
questions, the images' (shape, colour) read from their open questions and checked against every yes/no
question, and the images as tower pixels."""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import torch

from ..core.errors import WorkbenchError

SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "yellow", "teal", "brown", "gray", "black")
CLASSES = tuple((c, s) for s in SHAPES for c in COLORS)  # 24 (colour, shape) objects
IMAGE_SIZE = 224
YES, NO = "yes", "no"


class MissingDatasetError(WorkbenchError):
    """The easy-VQA package is not installed."""


def _pkg():
    try:
        import easy_vqa
    except ImportError:
        raise MissingDatasetError("easy-VQA is not installed: run `pip install --no-deps easy-vqa==1.0` "
                                  "(or the README's set-up command)") from None
    return easy_vqa


@lru_cache(maxsize=2)
def questions(split: str) -> list[tuple[str, str, int]]:
    """(question, answer, image id) of a split (``train`` or ``test``), in the package's order."""
    E = _pkg()
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
    q, a, i = E.get_train_questions() if split == "train" else E.get_test_questions()
    return list(zip(q, a, (int(x) for x in i)))


@lru_cache(maxsize=2)
def image_paths(split: str) -> dict[int, str]:
    E = _pkg()
    return E.get_train_image_paths() if split == "train" else E.get_test_image_paths()


def is_yesno(answer: str) -> bool:
    return answer in (YES, NO)


@lru_cache(maxsize=2)
def image_labels(split: str) -> dict[int, tuple[str, str]]:
    """(colour, shape) of every image of a split, read from its open questions.

    Raises:
        RuntimeError: an image's questions contradict each other (never seen in easy-VQA 1.0).
    """
    color: dict[int, str] = {}
    shape: dict[int, str] = {}
    qs = questions(split)
    for q, a, i in qs:
        if a in SHAPES:
            shape[i] = a
            m = re.match(r"what is the (\w+) shape\?", q)
            if m:
                color[i] = m.group(1)
        elif a in COLORS:
            color[i] = a
            m = re.search(r"of the (\w+)\?", q) or re.search(r"color is the (\w+)\?", q)
            if m and m.group(1) in SHAPES:
                shape[i] = m.group(1)
    for q, a, i in qs:  # yes/no questions fill gaps and check consistency
        if not is_yesno(a):
            continue
        neg = " not " in f" {q} " or q.startswith("is no ")
        truth = (a == YES) != neg
        words = set(re.findall(r"\w+", q))
        for c in COLORS:
            if c in words and truth:
                color.setdefault(i, c)
                if color[i] != c:
                    raise RuntimeError(f"easy-VQA {split} image {i}: colour {color[i]} vs question {q!r} -> {a}")
        for s in SHAPES:
            if s in words and truth:
                shape.setdefault(i, s)
                if shape[i] != s:
                    raise RuntimeError(f"easy-VQA {split} image {i}: shape {shape[i]} vs question {q!r} -> {a}")
    ids = sorted(image_paths(split))
    return {i: (color.get(i), shape.get(i)) for i in ids}


@lru_cache(maxsize=8192)
def image_array(split: str, image_id: int) -> np.ndarray:
    """One easy-VQA image as uint8 (64, 64, 3)."""
    from PIL import Image

    with Image.open(image_paths(split)[image_id]) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def to_pixels(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> tower input (3, 224, 224) float32 in [-1, 1] (bilinear resize, antialiased)."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False,
                                        antialias=True)
    return ((x[0] - 0.5) / 0.5).contiguous()


def image_pixels(split: str, image_id: int) -> torch.Tensor:
    """Tower input (3, 224, 224) of one easy-VQA image."""
    return to_pixels(image_array(split, image_id))


def blank_pixels() -> torch.Tensor:
    """A white image (3, 224, 224): the "blank image" control."""
    return torch.ones(3, IMAGE_SIZE, IMAGE_SIZE)
