"""Prompt-pair tasks for patching: indirect object identification and colored objects.

Both tasks are written for this project (templates below) and follow the setups of

* Wang et al. 2022, "Interpretability in the wild: a circuit for indirect object identification
  in GPT-2 small" (IOI): ``"When Mary and John went to the store, John gave a drink to"`` -> `` Mary``.
  The metric is the logit difference ``logit(IO) - logit(S)`` at the last position; the corrupted
  prompt is their ``p_ABC`` distribution: the three name slots get three fresh names, so the
  prompt no longer says who the indirect object is.
* Merullo et al. 2024, "Circuit component reuse across tasks in transformer language models",
  who compare the IOI circuit with a circuit for a colored-objects task (after BIG-bench's
  "reasoning about colored objects"). Ours: ``"The pen is red. The cup is blue. The key is green.
  What color is the cup? The cup is"`` -> `` blue``; logit difference against the color of another listed
  object; the corrupted prompt replaces the three listed colors with three other colors.

Every name, color and object is a single token with a leading space for the model's tokenizer
(:func:`single_tokens` filters the candidate lists), so a clean prompt and its corrupted twin have
the same length and every position lines up, which position-wise patching needs. Prompts of one
template share a length; :meth:`PatchingTask.groups` yields equal-length groups for batching.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from workbench.core.errors import WorkbenchError

NAMES = ("Mary John Alice Bob Tom James Sarah Emma David Michael Anna Paul Mark Lisa Kate Jack Peter Laura "
         "Daniel Rachel Ben Sam Max Lucy Amy Grace Adam Ryan Kevin Steve Jane Rose Helen Eric Tim Jim Joe "
         "Jessica Andrew Chris Matt Luke Nick Linda Susan Karen George Frank Henry Mike").split()
PLACES = "store park school office beach market garden house station restaurant".split()
OBJECTS_GIVEN = "drink book ball gift letter key ring bag".split()
IOI_TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {obj} to",
    "After {A} and {B} went to the {place}, {S} handed a {obj} to",
    "While {A} and {B} were working at the {place}, {S} gave a {obj} to",
    "Then, {A} and {B} had a long argument. Afterwards {S} said to",
)
COLORS = "red blue green yellow black white orange purple pink brown gray".split()
OBJECTS = "pen cup ball book key phone hat box bag lamp clock shoe plate bowl fork spoon chair car ring coin card bottle".split()
# SmolLM2-135M reads colors best from short "The X is C." statements (measured: logit difference
# about 1.0 clean vs -0.45 corrupted, top-1 accuracy 0.4-0.5; list phrasings gave under 0.4).
COLOR_TEMPLATES = (
    "The {o1} is {c1}. The {o2} is {c2}. The {o3} is {c3}. Question: what color is the {oq}? Answer: The {oq} is",
    "The {o1} is {c1}. The {o2} is {c2}. The {o3} is {c3}. What color is the {oq}? The {oq} is",
)


class TaskError(WorkbenchError):
    """A task cannot be built as asked (e.g. too few single-token words)."""


@dataclass
class PatchingTask:
    """Clean/corrupted prompt pairs with a correct and a wrong answer token per pair.

    Attributes:
        name: task name.
        clean, corrupted: lists of (T_g,) int64 token tensors (same length within a pair).
        answer, wrong: (n,) int64 token ids: the logit difference is ``logit[answer] - logit[wrong]``
            at the last position (the same two ids are used on the corrupted prompt).
        prompts, corrupted_prompts: the texts.
        template: (n,) template index of each pair.
    """

    name: str
    clean: list[torch.Tensor]
    corrupted: list[torch.Tensor]
    answer: torch.Tensor
    wrong: torch.Tensor
    prompts: list[str] = field(default_factory=list)
    corrupted_prompts: list[str] = field(default_factory=list)
    template: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clean)

    def groups(self) -> list[torch.Tensor]:
        """Indices of pairs grouped by token length (each group batches without padding)."""
        by_len: dict[int, list[int]] = {}
        for i, t in enumerate(self.clean):
            by_len.setdefault(len(t), []).append(i)
        return [torch.tensor(v) for _, v in sorted(by_len.items())]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clean (b, T), corrupted (b, T), answer (b,), wrong (b,)) for pair indices of one group."""
        return (torch.stack([self.clean[i] for i in idx]), torch.stack([self.corrupted[i] for i in idx]),
                self.answer[idx], self.wrong[idx])

    def subset(self, n: int) -> "PatchingTask":
        """The first ``n`` pairs."""
        return PatchingTask(self.name, self.clean[:n], self.corrupted[:n], self.answer[:n], self.wrong[:n],
                            self.prompts[:n], self.corrupted_prompts[:n], self.template[:n])


def single_tokens(tokenizer, words, prefix: str = " ") -> dict[str, int]:
    """Words that are one token (with ``prefix``) for this tokenizer: word -> token id."""
    out = {}
    for w in words:
        ids = tokenizer(prefix + w, add_special_tokens=False).input_ids
        if len(ids) == 1:
            out[w] = ids[0]
    return out


def _encode(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


def ioi_task(tokenizer, n: int = 32, seed: int = 0, templates=IOI_TEMPLATES) -> PatchingTask:
    """Indirect object identification pairs (Wang et al. 2022), half ABBA and half BABA order.

    Clean: ``template(A, B, S)`` with S one of A/B; answer = the other name (IO), wrong = S.
    Corrupted: the same template with three fresh distinct names (``p_ABC``).

    Raises:
        TaskError: fewer than 5 single-token names for this tokenizer.
    """
    names = single_tokens(tokenizer, NAMES)
    if len(names) < 5:
        raise TaskError(f"only {len(names)} of the IOI names are single tokens for this tokenizer; IOI needs 5")
    places, objs = list(single_tokens(tokenizer, PLACES)), list(single_tokens(tokenizer, OBJECTS_GIVEN))
    rng = random.Random(seed)
    clean, corr, ans, wrong, texts, ctexts, tmpl = [], [], [], [], [], [], []
    for i in range(n):
        t = i % len(templates)
        io, s, c1, c2, c3 = rng.sample(list(names), 5)
        a, b = (io, s) if (i // len(templates)) % 2 == 0 else (s, io)
        kw = dict(place=rng.choice(places or ["store"]), obj=rng.choice(objs or ["drink"]))
        text = templates[t].format(A=a, B=b, S=s, **kw)
        ctext = templates[t].format(A=c1, B=c2, S=c3, **kw)
        clean.append(_encode(tokenizer, text))
        corr.append(_encode(tokenizer, ctext))
        ans.append(names[io])
        wrong.append(names[s])
        texts.append(text)
        ctexts.append(ctext)
        tmpl.append(t)
    return PatchingTask("ioi", clean, corr, torch.tensor(ans), torch.tensor(wrong), texts, ctexts, tmpl)


def colored_objects_task(tokenizer, n: int = 32, seed: int = 0, templates=COLOR_TEMPLATES) -> PatchingTask:
    """Colored-objects pairs (after Merullo et al. 2024): name the color of one of three listed objects.

    Clean: three (color, object) pairs, then the question about one object; answer = its color,
    wrong = the color of another listed object. Corrupted: the same prompt with the three colors
    replaced by three other colors.

    Raises:
        TaskError: fewer than 6 single-token colors or 3 objects for this tokenizer.
    """
    colors, objects = single_tokens(tokenizer, COLORS), list(single_tokens(tokenizer, OBJECTS))
    if len(colors) < 6 or len(objects) < 3:
        raise TaskError("too few single-token colors/objects for this tokenizer: the task needs 6 colors and 3 objects")
    rng = random.Random(seed)
    clean, corr, ans, wrong, texts, ctexts, tmpl = [], [], [], [], [], [], []
    for i in range(n):
        t = i % len(templates)
        cs = rng.sample(list(colors), 6)
        os_ = rng.sample(objects, 3)
        q = rng.randrange(3)
        other = rng.choice([j for j in range(3) if j != q])
        kw = dict(o1=os_[0], o2=os_[1], o3=os_[2], oq=os_[q])
        text = templates[t].format(c1=cs[0], c2=cs[1], c3=cs[2], **kw)
        ctext = templates[t].format(c1=cs[3], c2=cs[4], c3=cs[5], **kw)
        clean.append(_encode(tokenizer, text))
        corr.append(_encode(tokenizer, ctext))
        ans.append(colors[cs[q]])
        wrong.append(colors[cs[other]])
        texts.append(text)
        ctexts.append(ctext)
        tmpl.append(t)
    return PatchingTask("colored_objects", clean, corr, torch.tensor(ans), torch.tensor(wrong), texts, ctexts, tmpl)


TASKS = {"ioi": ioi_task, "colored_objects": colored_objects_task}


def make_task(name: str, tokenizer, n: int = 32, seed: int = 0) -> PatchingTask:
    """Build a task by name (``ioi`` or ``colored_objects``).

    Raises:
        TaskError: unknown task name.
    """
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}: use one of {sorted(TASKS)}")
    return TASKS[name](tokenizer, n=n, seed=seed)
