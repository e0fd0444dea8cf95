"""Offline evaluation tasks built from real text: a multiple-choice cloze over ``pydoc_data.topics`` prose.

``pydoc-cloze``: each question is a window of ``context_tokens`` consecutive tokens of prose followed by
the blank, the next token, chosen where it is a whole word of at least four characters (a token that
starts with a space, is alphabetic, and is followed by a new word or punctuation). The choices are the
true word and ``n_choices - 1`` distractors drawn uniformly from the other whole-word tokens of the
question's own context window (so a distractor is always a word the model has just read, which makes
copying the context no help); only when the window has too few such words is the rest drawn from the
whole-word tokens that occur at least twice in the same split. The model answers with the choice whose token has the highest
next-token log-probability (one forward pass per question; no generation). Chance accuracy is 1 / n_choices.

Questions of the ``train`` split calibrate, those of the ``heldout`` split evaluate. The two are disjoint by
construction (:func:`cloze_paragraphs`): pydoc repeats paragraphs across topics (the 1217 prose paragraphs hold 983
distinct ones), so the cloze splits the *distinct* paragraphs, every fourth one held out, and a held-out context
is never text of the train split. With SmolLM2's tokenizer that leaves 321 held-out blanks of 32 context tokens
(``calibrate``'s default; it asks for 200) and 222 of 48. (:func:`workbench.tasks.text.prose_paragraphs`' own
train/heldout split, used by the other analyses, is by position and shares the repeated paragraphs.)
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch

from ..core.errors import WorkbenchError
from ..core.models import LoadedModel
from .text import prose_paragraphs

TASKS = ("pydoc-cloze",)
HELDOUT_EVERY = 4  # every fourth distinct paragraph is held out


class UnknownTaskError(WorkbenchError):
    """The task name is not one of :data:`TASKS`."""


@dataclass
class ChoiceTask:
    """A multiple-choice next-token task.

    Attributes:
        name: task name.
        contexts: (n, C) int64 prompt ids (equal length, no padding).
        choices: (n, K) int64 candidate next-token ids.
        answer: (n,) int64 index of the right choice.
        split: text split the questions come from.
    """

    name: str
    contexts: torch.Tensor
    choices: torch.Tensor
    answer: torch.Tensor
    split: str

    def __len__(self) -> int:
        return self.contexts.shape[0]

    def subset(self, idx) -> "ChoiceTask":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ChoiceTask(self.name, self.contexts[idx], self.choices[idx], self.answer[idx], self.split)


def _whole_word(piece: str, nxt: str) -> bool:
    return (piece.startswith(" ") and piece[1:].isalpha() and len(piece) >= 5
            and (nxt[:1] in (" ", "\n") or not nxt[:1].isalnum()))


def cloze_paragraphs(split: str) -> tuple[str, ...]:
    """The prose paragraphs of a cloze split: the distinct paragraphs of ``pydoc_data.topics`` (first occurrences,
    in topic order), every :data:`HELDOUT_EVERY`-th one in ``heldout`` and the others in ``train``, so that no
    paragraph is in both.

    Raises:
        ValueError: a split other than ``train`` or ``heldout``.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown cloze split {split!r}: use 'train' or 'heldout'")
    distinct = dict.fromkeys(prose_paragraphs("all"))
    return tuple(p for i, p in enumerate(distinct) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == (split == "heldout"))


def cloze_text(split: str) -> str:
    """The text a cloze split's questions come from: :func:`cloze_paragraphs` joined by blank lines."""
    return "\n\n".join(cloze_paragraphs(split))


def pydoc_cloze(tokenizer, split: str = "train", n: int = 100, context_tokens: int = 48, n_choices: int = 4,
                seed: int = 0) -> ChoiceTask:
    """Build the ``pydoc-cloze`` task (module docstring) deterministically from ``seed``.

    Args:
        tokenizer: a Hugging Face tokenizer.
        split: ``train`` (calibration) or ``heldout`` (evaluation); disjoint (:func:`cloze_paragraphs`).
        n: number of questions.
        context_tokens: tokens of prose before each blank.
        n_choices: the true word plus ``n_choices - 1`` distractors: other whole words of the question's own
            context window, topped up from the split's whole words that occur at least twice.
        seed: seed of the blanks and distractors.
    Raises:
        ValueError: fewer than ``n`` usable blanks in the split, or an unknown split.
    """
    ids = tokenizer(cloze_text(split), return_tensors="pt").input_ids[0].tolist()
    pieces = [tokenizer.decode([t]) for t in ids]
    ok = [p for p in range(context_tokens, len(ids) - 1) if _whole_word(pieces[p], pieces[p + 1])]
    pool_counts = Counter(ids[p] for p in ok)
    pool = sorted(t for t, c in pool_counts.items() if c >= 2)
    rng = random.Random(seed)
    # non-overlapping blanks: at least context_tokens apart
    rng.shuffle(ok)
    chosen, taken = [], []
    for p in ok:
        if all(abs(p - q) > context_tokens for q in taken):
            chosen.append(p)
            taken.append(p)
            if len(chosen) == n:
                break
    if len(chosen) < n:
        raise ValueError(f"the {split!r} prose has only {len(chosen)} usable blanks for {n} questions: ask for fewer")
    contexts, choices, answers = [], [], []
    for p in chosen:
        true = ids[p]
        local = sorted({ids[q] for q in range(p - context_tokens, p)
                        if _whole_word(pieces[q], pieces[q + 1]) and ids[q] != true})
        distract = rng.sample(local, min(len(local), n_choices - 1))
        distract += rng.sample([t for t in pool if t != true and t not in distract], n_choices - 1 - len(distract))
        cand = distract + [true]
        rng.shuffle(cand)
        contexts.append(ids[p - context_tokens: p])
        choices.append(cand)
        answers.append(cand.index(true))
    return ChoiceTask("pydoc-cloze", torch.tensor(contexts), torch.tensor(choices), torch.tensor(answers), split)


def build_task(name: str, tokenizer, split: str, n: int, seed: int = 0, **kw) -> ChoiceTask:
    """Build a task by name (see :data:`TASKS`).

    Raises:
        UnknownTaskError: unknown name.
    """
    if name == "pydoc-cloze":
        return pydoc_cloze(tokenizer, split, n, seed=seed, **kw)
    raise UnknownTaskError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")


@torch.no_grad()
def choice_scores(lm: LoadedModel, task: ChoiceTask, batch_size: int = 25) -> torch.Tensor:
    """Next-token log-probabilities of each choice: (n, K) float32. Active interventions apply."""
    out = []
    for a in range(0, len(task), batch_size):
        logits = lm.model(input_ids=task.contexts[a: a + batch_size], use_cache=False,
                          logits_to_keep=1).logits[:, -1].float()
        logp = torch.log_softmax(logits, -1)
        out.append(logp.gather(1, task.choices[a: a + batch_size]))
    return torch.cat(out)


def correct(scores: torch.Tensor, task: ChoiceTask) -> torch.Tensor:
    """(n,) bool: the highest-scoring choice is the answer."""
    return scores.argmax(-1) == task.answer
