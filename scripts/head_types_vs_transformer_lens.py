"""Agreement of workbench head-type scores with TransformerLens on SmolLM2-135M.

TransformerLens side: ``TransformerBridge.boot_transformers`` on the cached dequantized checkpoint
(eager attention), then (a) ``head_detector.detect_head`` on a prose paragraph for all three
head types (it prepends BOS), and (b) ``compute_head_attention_similarity_score`` on
``hook_pattern`` for repeated random tokens. Workbench side: ``head_type_scores`` on the same ids.
Writes ROOT/smollm2-135m/head_types_vs_transformer_lens.json (``--out ROOT``, default runs/; ``workbench
reproduce`` runs it with ``--out reports``), with its provenance.

    PYTHONPATH=. python scripts/head_types_vs_transformer_lens.py [--out runs]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformer_lens import head_detector as hd
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM

from workbench import load_model
from workbench.analyzers.head_types import HEAD_TYPES, head_type_scores, repeated_random_tokens
from workbench.core.models import cache_dir
from workbench.io.runs import model_dir
from workbench.tasks.text import prose_paragraphs

TL_NAME = {"previous_token": "previous_token_head", "duplicate_token": "duplicate_token_head",
           "induction": "induction_head"}
TL_PATTERN = {"previous_token": hd.get_previous_token_head_detection_pattern,
              "duplicate_token": hd.get_duplicate_token_head_detection_pattern,
              "induction": hd.get_induction_head_detection_pattern}


def agreement(ours: np.ndarray, ref: np.ndarray) -> dict:
    rho = pd.Series(ours.ravel()).corr(pd.Series(ref.ravel()), method="spearman")
    top_o, top_r = set(np.argsort(-ours.ravel())[:5]), set(np.argsort(-ref.ravel())[:5])
    return {"max_abs_diff": float(np.abs(ours - ref).max()), "spearman": float(rho), "top5_shared": len(top_o & top_r)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    lm = load_model("smollm2-135m")
    path = str(cache_dir() / "smollm2-135m")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    bridge = TransformerBridge.boot_transformers(path, hf_model=hf, tokenizer=lm.tokenizer)
    L, H = lm.spec.n_layers, lm.spec.n_heads
    text = " ".join(prose_paragraphs("heldout")[:3])
    ids = bridge.to_tokens(text)[:, :160]
    text = lm.tokenizer.decode(ids[0, 1:])
    assert torch.equal(bridge.to_tokens(text), ids), "prose does not round-trip through the tokenizer"
    out = {"model": lm.spec.name, "prose_tokens": int(ids.shape[1]), "detect_head": {}, "random_repeated": {}}
    with torch.no_grad():
        ours = head_type_scores(lm, ids)
        for k in HEAD_TYPES:
            ref = hd.detect_head(bridge, text, TL_NAME[k]).numpy()
            out["detect_head"][k] = agreement(ours[f"{k}_score"].to_numpy().reshape(L, H), ref)
        rnd = repeated_random_tokens(lm.model.config.vocab_size, 64, 2, seed=0)
        ours = head_type_scores(lm, rnd)
        refs = {k: np.zeros((L, H)) for k in HEAD_TYPES}
        for row in rnd:
            _, cache = bridge.run_with_cache(row[None])
            for k in HEAD_TYPES:
                det = TL_PATTERN[k](row[None])
                for layer in range(L):
                    pat = cache[f"blocks.{layer}.attn.hook_pattern"][0]
                    for h in range(H):
                        refs[k][layer, h] += hd.compute_head_attention_similarity_score(
                            pat[h], det, exclude_bos=False, exclude_current_token=False, error_measure="mul") / len(rnd)
        for k in HEAD_TYPES:
            out["random_repeated"][k] = agreement(ours[f"{k}_score"].to_numpy().reshape(L, H), refs[k])
    from workbench.io.provenance import code_sha256, collect, write_json

    import transformer_lens

    cfg = {"command": "head_types_vs_transformer_lens", "model": lm.spec.name, "prose_tokens": out["prose_tokens"],
           "random": {"length": 64, "n": 2, "seed": 0}, "transformer_lens": getattr(transformer_lens, "__version__", None),
           "code_sha256": code_sha256(["workbench.analyzers.head_types", "workbench.core.stats"])}
    write_json(out, model_dir(a.out, lm.spec.name) / "head_types_vs_transformer_lens.json", collect(lm, cfg, 0))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
