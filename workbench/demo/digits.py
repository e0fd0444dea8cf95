"""Images of handwritten digits for the ``digits-vlm`` test model and its hallucination benchmark.

The images are scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1797 grey
8 x 8 images, intensities 0..16, shipped inside scikit-learn, no download). A *composite* is a
32 x 32 canvas of 4 x 4 cells; each cell is blank or holds one digit image. Digits are drawn
with a skewed frequency (:data:`POPULARITY`) and a co-occurrence structure (:data:`PARTNERS`),
so that POPE's "popular" and "adversarial" negatives (Li et al. 2023, "Evaluating object
hallucination in large vision-language models") are meaningful for digits:

* popular negatives: the most frequent digits in the training composites that are absent;
* adversarial negatives: absent digits that co-occur most often with the present ones.

Digit images are split by index: even indices for training, odd ones for evaluation, so the
benchmark shows the model handwriting it never saw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

CANVAS = 32  # pixels per side of a composite
CELL = 8  # pixels per side of one digit image
GRID = CANVAS // CELL  # cells per side
N_CELLS = GRID * GRID
# Relative frequency of each digit 0..9 when drawing the first digit of a composite.
POPULARITY = np.array([0.06, 0.22, 0.05, 0.14, 0.04, 0.07, 0.05, 0.18, 0.08, 0.11])
# Co-occurring partner of each digit: a second digit is its partner with probability P_PARTNER.
PARTNERS = {0: 6, 1: 7, 2: 5, 3: 8, 4: 9, 5: 2, 6: 0, 7: 1, 8: 3, 9: 4}
P_PARTNER = 0.6

LIST_QUESTION = "What digits are in the image?"
YESNO_QUESTION = "Is there a {d} in the image?"
IMAGE_TOKEN = "<image>"
ANSWER_END = "\n"


@lru_cache(maxsize=1)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All sklearn digit images as float32 in [0, 1], shape (1797, 8, 8), and their labels (1797,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def split_indices(split: str) -> np.ndarray:
    """Indices of the digit images of a split: ``train`` (even indices) or ``test`` (odd)."""
    _, y = digit_images()
    idx = np.arange(len(y))
    if split == "train":
        return idx[0::2]
    if split == "test":
        return idx[1::2]
    raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")


@dataclass
class Composite:
    """One composite image and its content.

    Attributes:
        pixels: (1, 32, 32) float32 image in [0, 1].
        cells: digit in each of the 16 cells in reading order, or -1 for a blank cell.
    """

    pixels: torch.Tensor
    cells: list[int] = field(default_factory=list)

    @property
    def digits(self) -> list[int]:
        """Digits present, in reading order (left to right, top to bottom)."""
        return [c for c in self.cells if c >= 0]


def draw_digits(rng: np.random.Generator, n: int) -> list[int]:
    """Draw ``n`` distinct digits: the first by :data:`POPULARITY`, later ones often a present digit's partner."""
    out: list[int] = []
    while len(out) < n:
        if out and rng.random() < P_PARTNER:
            d = PARTNERS[int(rng.choice(out))]
        else:
            d = int(rng.choice(10, p=POPULARITY))
        if d not in out:
            out.append(d)
    return out


def make_composite(rng: np.random.Generator, split: str = "train", n_digits: int | None = None,
                   max_digits: int = 3) -> Composite:
    """A random composite of 1..``max_digits`` distinct digits in random cells (see module docstring)."""
    images, labels = digit_images()
    pool = split_indices(split)
    n = int(rng.integers(1, max_digits + 1)) if n_digits is None else n_digits
    digits = draw_digits(rng, n)
    cells = [-1] * N_CELLS
    for d, c in zip(digits, rng.permutation(N_CELLS)[:n]):
        cells[int(c)] = d
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    by_label = {d: pool[labels[pool] == d] for d in set(digits)}
    for c, d in enumerate(cells):
        if d >= 0:
            r, q = divmod(c, GRID)
            canvas[r * CELL:(r + 1) * CELL, q * CELL:(q + 1) * CELL] = images[int(rng.choice(by_label[d]))]
    return Composite(torch.from_numpy(canvas)[None], cells)


def blank_pixels() -> torch.Tensor:
    """An empty canvas (1, 32, 32): the "no image" control."""
    return torch.zeros(1, CANVAS, CANVAS)


def prompt_text(question: str, n_image_tokens: int) -> str:
    """The prompt: ``Image: <image>*n\\nQuestion: ...\\nAnswer:`` (n = 0 gives the text-only prompt)."""
    return f"Image: {IMAGE_TOKEN * n_image_tokens}\nQuestion: {question}\nAnswer:"


def list_answer(digits: list[int]) -> str:
    """Target answer of the list question: `` 3 7`` followed by the end-of-answer newline."""
    return "".join(f" {d}" for d in digits) + ANSWER_END


def yesno_answer(present: bool) -> str:
    return (" Yes" if present else " No") + ANSWER_END


def training_stats(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digit frequency (10,) and co-occurrence counts (10, 10) over ``n`` training composites' digit sets."""
    rng = np.random.default_rng(seed)
    freq = np.zeros(10)
    co = np.zeros((10, 10))
    for _ in range(n):
        ds = draw_digits(rng, int(rng.integers(1, 4)))
        for a in ds:
            freq[a] += 1
            for b in ds:
                if a != b:
                    co[a, b] += 1
    return freq, co
