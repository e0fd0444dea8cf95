"""Training ``effnet-smollm2-vqa`` on easy-VQA (:func:`train`): cached tower features, which object each
visual token lies on, the projector's feature alignment, multi-turn training sequences and the LoRA stage."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ..core.models import cache_dir
from .effnet_llava import ANSWER_END, PROJECTOR_PREFIX, WEIGHTS, assemble, projector_state_dict, prompt_text
from .effnet_lora import add_lora, lora_state
from .effnet_tower import EffNetLiteVisionModel, load_tower


def feature_cache_dir() -> Path:
    return cache_dir() / "effnet-lite0-features"


@torch.no_grad()
def extract_features(tower: EffNetLiteVisionModel, make_pixels, n: int, batch: int = 32, log=print) -> torch.Tensor:
    """Tower tokens (n, 49, 1280) float16 of the inputs ``make_pixels(i)`` (3, 224, 224), i < n."""
    out = []
    for i in range(0, n, batch):
        px = torch.stack([make_pixels(j) for j in range(i, min(n, i + batch))])
        out.append(tower(px).last_hidden_state.half())
        log(f"features {i + len(px)}/{n}")
    return torch.cat(out)


def cached_features(key: str, make_pixels, n: int, log=print) -> torch.Tensor:
    """Tower features of ``n`` inputs ``make_pixels(i)``, cached as safetensors under
    :func:`feature_cache_dir` (file ``<key>.safetensors``; not package data)."""
    from safetensors.torch import load_file, save_file

    path = feature_cache_dir() / f"{key}.safetensors"
    if path.exists():
        return load_file(str(path))["features"]
    feats = extract_features(load_tower(), make_pixels, n, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": feats.contiguous()}, str(path))
    return feats


def token_objects(rgb: np.ndarray, classes: list[int], grid: int) -> torch.Tensor:
    """Which object each of the 7 x 7 tokens lies on: (49,) int64, the class index (into
    :data:`workbench.demo.easyvqa.CLASSES`), -1 for background, -2 for mixed tokens or objects of unknown
    class (left out of the alignment loss). ``grid`` cells per side (1: a single image, 2: a scene); a
    pixel belongs to the object of its cell when it differs from the cell's corner (background) colour
    by > 40 in a channel; a token is on an object when >= 25% of its area is, background when < 2% is."""
    h = rgb.shape[0] // grid
    x = torch.from_numpy(rgb.astype(np.int16))
    masks = torch.zeros(grid * grid, rgb.shape[0], rgb.shape[1])
    for j in range(grid * grid):
        r, c = divmod(j, grid)
        cell = x[r * h:(r + 1) * h, c * h:(c + 1) * h]
        on = (cell - cell[0, 0]).abs().amax(-1) > 40
        masks[j, r * h:(r + 1) * h, c * h:(c + 1) * h] = on.float()
    frac = torch.nn.functional.adaptive_avg_pool2d(masks[None], 7)[0].flatten(1)  # (cells, 49)
    best, cell = frac.max(0)
    cls = torch.tensor(classes)[cell]
    cls = torch.where(cls < 0, torch.full_like(cls, -2), cls)
    out = torch.where(best >= 0.25, cls, torch.full_like(cls, -2))
    return torch.where(frac.sum(0) < 0.02, torch.full_like(cls, -1), out)


BACKGROUND_WORD = " "


def alignment_targets(tok, emb: torch.Tensor) -> torch.Tensor:
    """(25, d) target embeddings: per class of :data:`~workbench.demo.easyvqa.CLASSES` the mean of the input
    embeddings of its colour and shape words (`` red``, `` circle``), last row the background word."""
    from . import easyvqa as V

    def e(w):
        return emb[tok(w, add_special_tokens=False).input_ids[0]]

    rows = [(e(" " + c) + e(" " + s)) / 2 for c, s in V.CLASSES]
    return torch.stack(rows + [e(BACKGROUND_WORD)])


def align_projector(proj, feats: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, steps: int, seed: int,
                    batch: int = 64, lr: float = 2e-3, log=print) -> float:
    """Feature-alignment stage (no language-model pass): the projector maps each token on an object
    onto :func:`alignment_targets` of its class and each background token onto the background word
    (left-out tokens excluded); loss = squared error / mean squared target norm. Returns the last loss.

    Args:
        feats: (n, 49, 1280) tower tokens; labels: (n, 49) from :func:`token_objects`.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(proj.parameters(), lr=lr, weight_decay=0.0)
    scale = targets.pow(2).sum(-1).mean()
    loss = torch.tensor(0.0)
    for step in range(steps):
        pick = torch.randint(0, feats.shape[0], (batch,), generator=g)
        f, lab = feats[pick].float(), labels[pick]
        keep = lab >= -1
        t = targets[torch.where(lab >= 0, lab, torch.full_like(lab, targets.shape[0] - 1))]
        loss = (proj(f) - t).pow(2).sum(-1)[keep].mean() / scale
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"align step {step}: relative error {loss.item():.4f}")
    return float(loss.detach())


TRAIN_DEFAULTS = dict(n_images=400, n_scenes=200, steps_align=300, steps=20, batch=8, lr=3e-3, seed=0, turns=10,
                      lora_from=20, lora_rank=8, balanced=0, projector_lr=0.0)
SCENE_SEED = 100  # train scenes: scenes("train", n, SCENE_SEED)


def _sequence(tok, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """Multi-turn LLaVA training sequence: ids and a 0/1 answer mask. The first turn is exactly the
    evaluation prompt (``prompt_text(q)``); later turns append ``Question: ...\\nAnswer: ...\\n``."""
    ids, mask = [], []
    for j, (q, a) in enumerate(turns):
        p = tok(prompt_text(q)).input_ids if j == 0 else tok(f"Question: {q}\nAnswer:", add_special_tokens=False).input_ids
        t = tok(" " + a + ANSWER_END, add_special_tokens=False).input_ids
        ids += p + t
        mask += [0] * len(p) + [1] * len(t)
    return ids, mask


# easy-VQA's eight yes/no templates (every yes/no question of its train split is one of them, with
# ``{}`` = "<colour> shape" or "<shape>"; checked by a test): four ask whether the thing is there, four
# whether it is not.
POSITIVE_TEMPLATES = ("is a {} present?", "is there a {}?", "does the image contain a {}?", "is there a {} in the image?")
NEGATIVE_TEMPLATES = ("does the image not contain a {}?", "is there not a {}?", "is there not a {} in the image?",
                      "is no {} present?")


def absent_answer(question: str) -> str | None:
    """The right answer to an easy-VQA yes/no ``question`` when the thing it names is not in the image:
    "no" for a question in :data:`POSITIVE_TEMPLATES`, "yes" for one in :data:`NEGATIVE_TEMPLATES`, None for
    a question in neither. On a blank image this is the truthful answer to every such question."""
    import re

    for answer, templates in (("no", POSITIVE_TEMPLATES), ("yes", NEGATIVE_TEMPLATES)):
        for t in templates:
            if re.fullmatch(re.escape(t).replace(re.escape("{}"), r"[a-z]+(?: shape)?"), question):
                return answer
    return None


def balanced_questions(rng: np.random.Generator, label: tuple[str | None, str | None], n: int) -> list[tuple[str, str]]:
    """``n`` synthetic yes/no questions about one image of class ``label`` = (colour, shape), in easy-VQA's
    own templates, whose answer cannot be guessed from the question string.

    easy-VQA's yes/no questions are skewed per question string: "is there a red shape?" is "no" for 7 of
    8 images, so the question alone answers 0.825 of the test split (``reports/effnet-smollm2-vqa/prior.json``)
    and a model can score well without reading the image. Here each question names the image's true
    attribute or a uniformly drawn wrong one (alternating, so half and half), about its colour or its
    shape (alternating; an attribute the label lacks (None) is skipped), in a uniformly drawn
    template of :data:`POSITIVE_TEMPLATES` + :data:`NEGATIVE_TEMPLATES`. Over images whose classes are
    uniform, every question string is then "yes" as often as "no" in expectation.

    Returns [(question, "yes" | "no")], possibly fewer than ``n`` when the label has no known attribute.
    """
    from . import easyvqa as V

    colour, shape = label
    attrs = [(a, sorted({c[k] for c in V.CLASSES}), fmt) for a, k, fmt in ((colour, 0, "{} shape"), (shape, 1, "{}"))
             if a is not None]
    out: list[tuple[str, str]] = []
    if not attrs:
        return out
    templates = POSITIVE_TEMPLATES + NEGATIVE_TEMPLATES
    for j in range(n):
        true, values, fmt = attrs[(j // 2) % len(attrs)]
        present = j % 2 == 0
        word = true if present else rng.choice([v for v in values if v != true])
        t = templates[rng.integers(len(templates))]
        positive = t in POSITIVE_TEMPLATES
        out.append((t.format(fmt.format(word)), "yes" if present == positive else "no"))
    return out


def training_examples(n_images: int, n_scenes: int, turns: int, seed: int,
                      balanced: int = 0) -> list[tuple[str, int, list[tuple[str, str]]]]:
    """(source, feature index, turns) examples: for each of the first ``n_images`` train images (sorted
    ids) its questions, plus ``balanced`` synthetic yes/no questions (:func:`balanced_questions`), in
    groups of up to ``turns``; for each train scene its caption and two yes/no questions, in random
    order. Deterministic in ``seed``."""
    from . import easyvqa as V

    rng = np.random.default_rng(seed)
    ids = sorted(V.image_paths("train"))[:n_images]
    by_img: dict[int, list[tuple[str, str]]] = {}
    for q, a, i in V.questions("train"):
        by_img.setdefault(i, []).append((q, a))
    lab_of = V.image_labels("train") if balanced else {}
    out = []
    for j, i in enumerate(ids):
        qs = by_img.get(i, []) + (balanced_questions(rng, lab_of[i], balanced) if balanced else [])
        order = rng.permutation(len(qs))
        for start in range(0, len(qs), turns):
            out.append(("image", j, [qs[k] for k in order[start:start + turns]]))
    for j, sc in enumerate(V.scenes("train", n_scenes, SCENE_SEED)):
        qs = V.scene_questions(rng, sc)
        out.append(("scene", j, [qs[k] for k in rng.permutation(len(qs))]))
    return out


def train(n_images: int = 400, n_scenes: int = 200, steps_align: int = 300, steps: int = 20, batch: int = 8,
          lr: float = 3e-3, seed: int = 0, turns: int = 10, lora_from: int = 20, lora_rank: int = 8,
          out: Path | None = WEIGHTS, init: Path | None = None, balanced: int = 0, projector_lr: float = 0.0,
          log=print) -> dict:
    """Train the projector and a LoRA adapter on easy-VQA train; save both to ``out`` (seeded).

    1. Tower features of the first ``n_images`` train images and of ``n_scenes`` train scenes are
       computed once and cached as safetensors (:func:`cached_features`): the tower never runs again.
    2. Feature alignment of the projector without the language model (:func:`align_projector`,
       ``steps_align`` steps): each object token goes to the mean input embedding of its colour and
       shape words, so the image tokens arrive at the norm and in the region of word embeddings.
       The projector is then frozen and its outputs computed once (unless ``projector_lr`` > 0, below).
    3. ``steps`` end-to-end steps that train only a rank-``lora_rank`` LoRA adapter (:class:`LoRALinear`,
       alpha = 2 r) on all seven linear maps of the language model's layers ``lora_from``..29 (the
       frozen projector alone leaves the frozen SmolLM2 answering "no" to nearly every yes/no
       question; with the lower layers frozen and no trainable part below them, the backward pass runs
       through the top layers only). Each step takes ``batch`` sequences, 3/4 single-image
       (up to ``turns`` of the image's easy-VQA questions as one multi-turn conversation) and 1/4
       scene sequences (caption plus two yes/no questions, random order); loss = cross-entropy on
       the answer tokens only (prompt and image positions masked); AdamW, linear warm-up over 5% of
       the steps then cosine decay to 0. ``balanced`` > 0 adds that many synthetic yes/no questions
       per image whose answer the question string does not predict (:func:`balanced_questions`), so
       that yes/no answers must come from the image. ``projector_lr`` > 0 also trains the projector
       in this stage, end to end through the whole frozen language model (LLaVA's second stage trains
       it too), at that peak learning rate (same schedule); the backward pass then runs through all
       30 layers (input gradients only below ``lora_from``): 10.1 s per step against 7.9 s here
       (reports/effnet-smollm2-vqa/README.md). Without it the projector stays as aligned; it was tried
       because colour was the model's weak answer and the aligned projector's output keeps an object's
       colour less linearly decodable than the tower's features (``scripts/effnet_colour_probe.py``).

    The shipped file holds the projector (``model.multi_modal_projector.*``) and the adapter
    (``lora.*``); :func:`assemble` merges the adapter into the language model's weights.

    ``init`` (a file this function wrote) continues an earlier run: its projector replaces the alignment
    stage (``steps_align`` is ignored) and its adapter factors are the starting point; the step schedule and
    the data order start afresh from ``seed``. Its hash is recorded in the returned ``init_sha256``.

    Returns timings (s) and losses.
    """
    from safetensors.torch import save_file

    from . import easyvqa as V
    from ..core.models import load_model

    torch.manual_seed(seed)
    t0 = time.time()
    img_ids = sorted(V.image_paths("train"))[:n_images]
    f_img = cached_features(f"train-images-{n_images}", lambda i: V.image_pixels("train", img_ids[i]), n_images, log)
    sc = V.scenes("train", n_scenes, SCENE_SEED)
    f_sc = cached_features(f"train-scenes-{n_scenes}-{SCENE_SEED}", lambda i: sc[i].pixels(), n_scenes, log)
    lab_of = V.image_labels("train")
    cls_img = [class_index(lab_of[i]) for i in img_ids]
    labels = torch.stack([token_objects(V.image_array("train", i), [k], 1) for i, k in zip(img_ids, cls_img)]
                         + [token_objects(s.rgb(), s.classes, 2) for s in sc])
    t_feat = time.time()
    model, tok = assemble(load_model("smollm2-135m"))
    model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    for p in model.parameters():
        p.requires_grad_(False)
    proj = model.model.multi_modal_projector
    for p in proj.parameters():
        p.requires_grad_(True)
    emb = model.get_input_embeddings()
    start = None
    if init is not None:
        from safetensors.torch import load_file

        start = load_file(str(init))
        proj.load_state_dict({k[len(PROJECTOR_PREFIX):]: v for k, v in start.items() if k.startswith(PROJECTOR_PREFIX)})
        align_loss, steps_align = float("nan"), 0
    else:
        align_loss = align_projector(proj, torch.cat([f_img, f_sc]), labels,
                                     alignment_targets(tok, emb.weight.detach()), steps_align, seed, batch=16, log=log)
    train_proj = projector_lr > 0
    for p in proj.parameters():
        p.requires_grad_(train_proj)
    if not train_proj:
        with torch.no_grad():
            z_img, z_sc = proj(f_img.float()), proj(f_sc.float())
    t_align = time.time()
    lm = model.model.language_model
    torch.manual_seed(seed)
    wrappers = add_lora(lm, lora_from, lora_rank)
    if start is not None:
        with torch.no_grad():
            for k, w in wrappers.items():
                w.A.copy_(start[f"lora.{k}.A"])
                w.B.copy_(start[f"lora.{k}.B"])
    params = [p for w in wrappers.values() for p in (w.A, w.B)]
    ex = training_examples(n_images, n_scenes, turns, seed, balanced)
    rng = np.random.default_rng(seed + 1)
    pools = {s: [e for e in ex if e[0] == s] for s in ("image", "scene")}
    orders = {s: list(rng.permutation(len(v))) for s, v in pools.items()}
    groups = [{"params": params, "lr": lr}] + ([{"params": list(proj.parameters()), "lr": projector_lr}] if train_proj else [])
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps))))
    img_tok = model.config.image_token_id
    losses = []
    n_image = (3 * batch) // 4
    t1 = time.time()
    for step in range(steps):
        items = []
        for k in range(batch):
            s = "image" if k < n_image else "scene"
            if not orders[s]:
                orders[s] = list(rng.permutation(len(pools[s])))
            items.append(pools[s][orders[s].pop()])
        seqs = [_sequence(tok, t) for _, _, t in items]
        n = max(len(a) for a, _ in seqs)
        ids = torch.full((batch, n), tok.pad_token_id or 0, dtype=torch.long)
        lab = torch.zeros(batch, n, dtype=torch.bool)
        for r, (a, m) in enumerate(seqs):
            ids[r, : len(a)] = torch.tensor(a)
            lab[r, : len(m)] = torch.tensor(m, dtype=torch.bool)
        if train_proj:
            z = proj(torch.stack([(f_img if s == "image" else f_sc)[j] for s, j, _ in items]).float())
        else:
            z = torch.stack([(z_img if s == "image" else z_sc)[j] for s, j, _ in items])
        with torch.no_grad():
            x = emb(ids)
        x = x.masked_scatter((ids == img_tok)[..., None].expand_as(x), z.reshape(-1, x.shape[-1]))
        h = lm(inputs_embeds=x, use_cache=False).last_hidden_state  # right padding: causal, no mask needed
        pred = lab[:, 1:]
        loss = torch.nn.functional.cross_entropy(model.lm_head(h[:, :-1][pred]), ids[:, 1:][pred])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        log(f"step {step}: loss {losses[-1]:.3f} ({time.time() - t1:.0f} s)")
    t2 = time.time()
    state = {**projector_state_dict(model), **lora_state(wrappers)}
    meta = {"seed": seed, "steps_align": steps_align, "steps": steps, "batch": batch, "lr": lr, "n_images": n_images,
            "n_scenes": n_scenes, "turns": turns, "lora_from": lora_from, "lora_rank": lora_rank, "balanced": balanced,
            "projector_lr": projector_lr}
    if init is not None:
        import hashlib

        meta["init_sha256"] = hashlib.sha256(Path(init).read_bytes()).hexdigest()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out), metadata={k: str(v) for k, v in meta.items()})
    return {**meta, "features_s": t_feat - t0, "align_s": t_align - t_feat, "train_s": t2 - t1, "total_s": t2 - t0,
            "align_loss": align_loss, "n_params": sum(v.numel() for v in state.values()),
            "loss_first5": float(np.mean(losses[:5])) if losses else None,
            "loss_last5": float(np.mean(losses[-5:])) if losses else None, "losses": losses}


def class_index(label: tuple[str | None, str | None]) -> int:
    """Index of an image's (colour, shape) in :data:`~workbench.demo.easyvqa.CLASSES`; -1 when unknown."""
    from . import easyvqa as V

    return V.CLASSES.index(label) if label in V.CLASSES else -1
