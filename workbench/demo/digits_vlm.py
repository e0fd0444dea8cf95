"""``digits-vlm``: a small LLaVA-style vision-language model built on the real SmolLM2-135M.

No pretrained vision-language model can be downloaded here, so the workbench builds one:

* vision tower: a tiny CLIP vision transformer (2 layers, width 64, 4 heads, 1 input channel,
  32 x 32 composites of 4 x 4 cells, 8 x 8 patches -> one patch token per cell, 16 tokens),
  randomly initialised and trained;
* projector: LLaVA-1.5's two-layer GELU MLP (64 -> 576 -> 576), trained;
* language model: the frozen SmolLM2-135M-Instruct (``workbench.load_model("smollm2-135m")``)
  with one added token, ``<image>``.

Together they are a genuine Hugging Face ``LlavaForConditionalGeneration`` (Liu et al. 2023,
"Visual instruction tuning"): the prompt ``Image: <image>*16\nQuestion: ...\nAnswer:`` holds 16
placeholder tokens whose input embeddings are replaced by the projected patch features, so every
analyzer that works on llava-hf checkpoints works on this model.

Training (:func:`train`, script ``scripts/train_digits_vlm.py``) is deterministic (fixed seeds,
fixed data order), backbone frozen, on CPU:

1. the tower learns to classify each cell (digit or blank) with a linear probe on its patch
   feature (no language model involved);
2. tower and projector learn to map each cell token onto the word embedding of what it shows
   (the digit's token, or a space for a blank cell) -- a feature-alignment stage without
   language-model passes;
3. tower and projector are trained end to end through the frozen language model on answers to
   "What digits are in the image?" (`` 3 7``) and "Is there a 5 in the image?" (`` Yes``/`` No``).
   This is the slow stage: 150 steps of 8 questions took 330 s on 2 CPU cores (about 1-2 s a
   step when the cores are free, 10-30 s when shared); stages 1 and 2 take seconds. With only 30
   steps the model ignored the image (always "No", always " 1 2 3 4"); 150 steps make it read it.

Only the trained tower and projector ship (``workbench/data/digits_vlm.safetensors``, 1.8 MB);
the first :func:`load` assembles the full checkpoint from the SmolLM2 cache into
``cache_dir()/digits-vlm-<hash>`` and later loads read it.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import digits as D
from ..core.models import LoadedModel
from ..core.presets import Preset
from ..core.vlm import is_assembled, load_assembled_llava

NAME = "digits-vlm"
# the shipped weights; WORKBENCH_DIGITS_VLM_WEIGHTS points elsewhere (e.g. a retrained file)
WEIGHTS = Path(os.environ.get("WORKBENCH_DIGITS_VLM_WEIGHTS", Path(__file__).parents[1] / "data" / "digits_vlm.safetensors"))
N_IMAGE_TOKENS = D.N_CELLS  # one 8 x 8 patch per cell
BLANK_TOKEN = " "
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_channels=1,
              image_size=D.CANVAS, patch_size=D.CELL, hidden_act="gelu", layer_norm_eps=1e-5)


def build_config(text_config):
    """LlavaConfig of the digits VLM around a Llama ``text_config`` (vocab grows by one for ``<image>``)."""
    from transformers import CLIPVisionConfig, LlavaConfig

    text = text_config.__class__(**{**text_config.to_dict(), "vocab_size": text_config.vocab_size + 1})
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**VISION), text_config=text, image_token_id=text_config.vocab_size,
                      projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-1,
                      image_seq_length=N_IMAGE_TOKENS, tie_word_embeddings=True)
    return cfg


def _vision_prefixes() -> tuple[str, ...]:
    return ("model.vision_tower.", "model.multi_modal_projector.")


def assemble(base: LoadedModel, vision_state: dict[str, torch.Tensor] | None = None):
    """Build the LLaVA model from the loaded SmolLM2 ``base`` (its weights copied, frozen) and a tokenizer.

    Args:
        base: ``load_model("smollm2-135m")``.
        vision_state: trained tower + projector weights (keys ``model.vision_tower.*``,
            ``model.multi_modal_projector.*``); None keeps the seeded random initialisation.
    Returns:
        (LlavaForConditionalGeneration in eval mode with workbench attention in the language model
        and SDPA in the vision tower, tokenizer with ``<image>`` added)
    """
    from transformers import LlavaForConditionalGeneration

    from ..core.attention import register_attention

    register_attention()
    tok = _tokenizer(base.tokenizer)
    cfg = build_config(base.model.config)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    sd = {}
    for k, v in base.model.state_dict().items():
        if k.startswith("model."):
            sd["model.language_model." + k[len("model."):]] = v
    emb = sd["model.language_model.embed_tokens.weight"]
    # the <image> row is never read (its embeddings are replaced); the mean keeps its logit ordinary
    sd["model.language_model.embed_tokens.weight"] = torch.cat([emb, emb.mean(0, keepdim=True)])
    sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.startswith(_vision_prefixes())]
    if bad or unexpected:
        raise RuntimeError(f"digits-vlm assembly failed: missing {bad[:3]}, unexpected {unexpected[:3]}")
    if vision_state is not None:
        model.load_state_dict(vision_state, strict=False)
    model.tie_weights()
    set_attention(model)
    return model.eval(), tok


def set_attention(model, text: str = "workbench", vision: str = "sdpa") -> None:
    """Language model attention ``text`` (workbench kernel by default), vision tower attention ``vision``."""
    model.set_attn_implementation({"text_config": text, "vision_config": vision})


def _tokenizer(base_tok):
    import copy

    tok = copy.deepcopy(base_tok)
    tok.add_special_tokens({"additional_special_tokens": [D.IMAGE_TOKEN]})
    return tok


def vision_state_dict(model) -> dict[str, torch.Tensor]:
    """The trainable part (tower + projector) of the LLaVA model's state dict."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k.startswith(_vision_prefixes())}


# --- training -----------------------------------------------------------------------------------


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


# --- loading ------------------------------------------------------------------------------------


def load() -> LoadedModel:
    """Load ``digits-vlm`` (assembling the cached checkpoint on first use).

    Raises:
        MissingModelPackageError: the SmolLM2 weights are missing (see the smollm2-135m preset).
        FileNotFoundError: the trained weights are missing: run ``python scripts/train_digits_vlm.py``.
    """
    return load_assembled_llava(NAME, WEIGHTS, assemble, "scripts/train_digits_vlm.py",
                                {"image_size": D.CANVAS, "n_image_tokens": N_IMAGE_TOKENS})


# registered in workbench.core.presets.PRESETS by the package root (lazily: imported when the preset is used)
PRESET = Preset(name=NAME, description="SmolLM2-135M + a CLIP tower trained on sklearn digits (LLaVA, 16 image tokens)",
                load=load, is_cached=lambda: is_assembled(NAME, WEIGHTS))


# --- inputs ---------------------------------------------------------------------------------------


def make_input(lm: LoadedModel, question: str, pixels: torch.Tensor | None):
    """The digits-vlm input for a question about an image (1, 32, 32); ``pixels=None`` gives the
    prompt without image tokens (the "image removed" control). Returns a :class:`~workbench.core.vlm.VLMInput`."""
    from ..core.vlm import VLMInput

    n = 0 if pixels is None else N_IMAGE_TOKENS
    ids = lm.tokenizer(D.prompt_text(question, n), return_tensors="pt").input_ids
    return VLMInput(ids, None if pixels is None else pixels[None], {})
