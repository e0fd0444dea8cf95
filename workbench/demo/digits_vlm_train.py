"""Training ``digits-vlm`` (:func:`train`): the tower's cell probe, the feature alignment of tower and projector
onto word embeddings, and the end-to-end stage through the frozen language model (stages in :mod:`.digits_vlm`)."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from . import digits as D
from .digits_vlm_model import (BLANK_TOKEN, N_IMAGE_TOKENS, VISION, WEIGHTS, _vision_prefixes, assemble, set_attention,
                               vision_state_dict)


def _encode_batch(tok, items: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, N), attention mask (B, N) and label mask (B, N) of the answer tokens."""
    rows, ans = [], []
    for prompt, answer in items:
        p = tok(prompt).input_ids
        a = tok(answer).input_ids
        rows.append(p + a)
        ans.append((len(p), len(p) + len(a)))
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), tok.pad_token_id or 0, dtype=torch.long)
    att = torch.zeros(len(rows), n, dtype=torch.long)
    lab = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, (r, (a, b)) in enumerate(zip(rows, ans)):
        ids[i, : len(r)] = torch.tensor(r)
        att[i, : len(r)] = 1
        lab[i, a:b] = True
    return ids, att, lab


def training_item(rng: np.random.Generator, split: str = "train") -> tuple[D.Composite, str, str]:
    """One (composite, question, answer): half list questions, half balanced yes/no questions."""
    comp = D.make_composite(rng, split)
    if rng.random() < 0.5:
        return comp, D.LIST_QUESTION, D.list_answer(comp.digits)
    present = rng.random() < 0.5
    d = int(rng.choice(comp.digits)) if present else int(rng.choice([x for x in range(10) if x not in comp.digits]))
    return comp, D.YESNO_QUESTION.format(d=d), D.yesno_answer(present)


def _cell_targets(comps: list[D.Composite]) -> torch.Tensor:
    """(B, 16) class of each cell: the digit 0..9, or 10 for blank."""
    return torch.tensor([[c if c >= 0 else 10 for c in comp.cells] for comp in comps])


def _pretrain_tower(model, steps: int, seed: int, log) -> None:
    """Stage 1: classify each cell (digit or blank) from its patch feature with a linear probe."""
    tower = model.model.vision_tower
    probe = torch.nn.Linear(VISION["hidden_size"], 11)
    opt = torch.optim.AdamW(list(tower.parameters()) + list(probe.parameters()), lr=3e-3, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        comps = [D.make_composite(rng, "train") for _ in range(32)]
        px = torch.stack([c.pixels for c in comps])
        h = tower(pixel_values=px).last_hidden_state[:, 1:]  # (B, 16, W): one patch per cell, CLS dropped
        loss = torch.nn.functional.cross_entropy(probe(h).reshape(-1, 11), _cell_targets(comps).reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"stage 1 step {step}: cell loss {loss.item():.3f}")


def _align_projector(model, tok, steps: int, seed: int, log) -> None:
    """Stage 2: the projector maps each cell token onto the word embedding of what the cell shows.

    Targets: the input embedding of the digit's token (``"3"``) for a digit cell and of
    :data:`BLANK_TOKEN` for a blank cell, so the frozen language model reads the image much as it
    reads a row of characters (LLaVA's feature-alignment stage, with the answer replaced by the
    embedding it should produce). Tower and projector are both trained; no language-model pass.
    """
    emb = model.get_input_embeddings().weight.detach()
    table = torch.stack([emb[tok.convert_tokens_to_ids(str(d))] for d in range(10)] + [emb[tok(BLANK_TOKEN).input_ids[0]]])
    params = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    rng = np.random.default_rng(seed + 7)
    for step in range(steps):
        comps = [D.make_composite(rng, "train") for _ in range(32)]
        px = torch.stack([c.pixels for c in comps])
        feats = model.model.get_image_features(pixel_values=px, return_dict=True).pooler_output
        feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats  # (B, 16, d_model)
        loss = torch.nn.functional.mse_loss(feats, table[_cell_targets(comps)]) / table.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"stage 2 step {step}: relative embedding error {loss.item():.4f}")


TRAIN_DEFAULTS = dict(steps_tower=100, steps_align=100, steps_lm=150, batch=8, lr=1e-3)


def train(steps_tower: int = 100, steps_align: int = 100, steps_lm: int = 150, batch: int = 8, seed: int = 0,
          lr: float = 1e-3, out: Path | None = WEIGHTS, log=print) -> dict:
    """Train tower + projector deterministically; save them to ``out`` (safetensors). Returns timings (s).

    Args:
        steps_tower: stage-1 steps (32 composites each): cell classification.
        steps_align: stage-2 steps (32 composites each): projector onto the word embeddings.
        steps_lm: optional stage-3 steps through the frozen SmolLM2 on answers (``batch`` questions
            each); the slow stage (several seconds a step on 2 CPU cores).
        seed: the one seed of data order and initialisation.
    """
    from safetensors.torch import save_file

    from ..core.models import load_model

    torch.manual_seed(seed)
    t0 = time.time()
    base = load_model("smollm2-135m")
    model, tok = assemble(base)
    del base
    set_attention(model, text="sdpa")  # training uses autograd through standard SDPA
    for p in model.model.language_model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(False)
    model.train()
    t_load = time.time()
    _pretrain_tower(model, steps_tower, seed, log)
    _align_projector(model, tok, steps_align, seed, log)
    t1 = time.time()
    if steps_lm:
        trainable = [p for n, p in model.named_parameters() if n.startswith(_vision_prefixes())]
        opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps_lm)))
        rng = np.random.default_rng(seed + 1)
        for step in range(steps_lm):
            items = [training_item(rng) for _ in range(batch)]
            ids, att, lab = _encode_batch(tok, [(D.prompt_text(q, N_IMAGE_TOKENS), a) for _, q, a in items])
            px = torch.stack([c.pixels for c, _, _ in items])
            hidden = model.model(input_ids=ids, attention_mask=att, pixel_values=px, use_cache=False).last_hidden_state
            pred = lab[:, 1:]  # position t predicts token t+1: logits only where an answer token is predicted
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[:, :-1][pred]), ids[:, 1:][pred])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            log(f"stage 3 step {step}: answer loss {loss.item():.3f} ({time.time() - t1:.0f} s)")
    t2 = time.time()
    model.eval()
    state = vision_state_dict(model)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out), metadata={"seed": str(seed), "steps_tower": str(steps_tower),
                                             "steps_align": str(steps_align), "steps_lm": str(steps_lm)})
    return {"load_s": t_load - t0, "stages_1_2_s": t1 - t_load, "stage_3_s": t2 - t1, "total_s": t2 - t0,
            "n_params": sum(v.numel() for v in state.values())}
