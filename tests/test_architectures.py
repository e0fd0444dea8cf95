"""Architectures the workbench cannot trace are refused at load time, in one line, and through the CLI."""
from __future__ import annotations

import pytest
import torch

from workbench import cli
from workbench.core.errors import UnsupportedArchitectureError
from workbench.core.models import load_model
from workbench.core.tiny_models import _tokenizer, save_tiny


def _save(config, path, seq2seq=False):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_config(config)
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return str(path)


def _unsupported():
    import transformers as T

    small = dict(vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return {
        "bloom": (lambda: T.BloomConfig(hidden_size=32, n_layer=1, n_head=4, **small), "ALiBi", False),
        "falcon-alibi": (lambda: T.FalconConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                alibi=True, **small), "ALiBi", False),
        "falcon-rope": (lambda: T.FalconConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                               alibi=False, **small), "AttentionInterface", False),
        "t5": (lambda: T.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0,
                                  **small), "encoder-decoder", True),
        "bart": (lambda: T.BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                                      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, **small),
                 "encoder-decoder", True),
        "gpt2-cross-attention": (lambda: T.GPT2Config(n_embd=32, n_layer=1, n_head=4, add_cross_attention=True,
                                                      **small), "cross-attention", False),
    }


@pytest.mark.parametrize("name", list(_unsupported()))
def test_unsupported_architecture_refused_at_load_time(name, tmp_path):
    make, feature, seq2seq = _unsupported()[name]
    path = _save(make(), tmp_path / name, seq2seq)
    with pytest.raises(UnsupportedArchitectureError, match=feature) as err:
        load_model(path)
    assert "\n" not in str(err.value) and "Llama" in str(err.value)  # one line, naming what does work


@pytest.mark.parametrize("name", ["t5", "bloom", "falcon-rope", "gpt2-cross-attention"])
def test_refused_before_the_weights_load(name, tmp_path, monkeypatch):
    """Encoder-decoder, ALiBi, own attention code and configured cross-attention are refused from the
    config alone: no model class is ever instantiated."""
    import transformers

    make, feature, seq2seq = _unsupported()[name]
    path = _save(make(), tmp_path / name, seq2seq)
    called = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForImageTextToText):
        monkeypatch.setattr(auto, "from_pretrained", classmethod(lambda cls, *a, **k: called.append(a)))
    with pytest.raises(UnsupportedArchitectureError, match=feature):
        load_model(path)
    assert not called


def _run_cli(capsys, *args):
    code = cli.main(list(args))
    out = capsys.readouterr()
    err = "".join(line + "\n" for line in out.err.replace("\r", "\n").splitlines() if line and "it/s]" not in line)
    return code, out.out, err


def test_cli_refuses_alibi_model_with_one_line(capsys, tmp_path):
    path = _save(_unsupported()["bloom"][0](), tmp_path / "bloom")
    code, _, err = _run_cli(capsys, "trace", "--model", path, "--prompt", "hello", "--out", str(tmp_path / "t"))
    assert code == 2 and err.startswith("error: ") and "ALiBi" in err and err.count("\n") == 1


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_cli_traces_non_llama_layouts(capsys, tmp_path, arch):
    """GPT-2 (``h.i.attn``) and GPT-NeoX (``layers.i.attention``) checkpoints trace through the CLI,
    with z and residuals (their layers are found by :func:`workbench.core.hooks.decoder_layers`)."""
    from workbench.core.trace import Trace

    path = save_tiny(arch, tmp_path / arch)
    code, _, err = _run_cli(capsys, "trace", "--model", str(path), "--prompt", "hello", "--window", "0:5",
                            "--z", "--resid", "--out", str(tmp_path / "t"))
    assert code == 0, err
    (trace_dir,) = {f.parent for f in (tmp_path / "t").rglob("trace.json")}  # --out is the output root
    tr = Trace.load(trace_dir)
    assert tuple(tr["pattern"].shape) == (2, 1, 4, 5, 5) and tuple(tr["z"].shape) == (2, 1, 5, 4, 16)
    assert tuple(tr["resid_pre"].shape) == (2, 1, 5, 64)
    assert torch.allclose(tr["pattern"].sum(-1), torch.ones(2, 1, 4, 5), atol=1e-5)


class _BiasedAttention(torch.nn.Module):
    """An attention module passing an argument the workbench kernel does not know (read from this source)."""

    def forward(self, q, k, v, attention_interface=None):
        return attention_interface(self, q, k, v, None, scaling=1.0, alibi_slopes=q)


def test_unknown_attention_argument_refused_at_load_time():
    from workbench.core.support import _check_supported

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = _BiasedAttention()

    class Model(torch.nn.Module):
        _supports_attention_backend = True

        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer(), Layer()])

    with pytest.raises(UnsupportedArchitectureError, match="alibi_slopes") as err:
        _check_supported(Model(), "custom-model")
    assert "scaling" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_oss", "qwen2_vl"])
def test_supported_attention_arguments_pass_the_check(arch):
    """The matrix architectures' attention calls use only known arguments (the check is not vacuous:
    it reads the real ``attention_interface(...)`` call of each)."""
    import importlib

    from workbench.core.attention import IGNORED_ATTENTION_KWARGS, SUPPORTED_ATTENTION_KWARGS
    from workbench.core.support import _attention_call_kwargs

    mod = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
    cls = {"llama": "LlamaAttention", "gpt2": "GPT2Attention", "gpt_oss": "GptOssAttention",
           "qwen2_vl": "Qwen2VLAttention"}[arch]
    names = _attention_call_kwargs(getattr(mod, cls))
    assert "scaling" in names and names <= SUPPORTED_ATTENTION_KWARGS | IGNORED_ATTENTION_KWARGS


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "gemma2", "gpt_oss", "llava", "qwen2_vl"])
def test_census_runs_on_each_layout(tmp_path, arch):
    """Every census section runs on the non-Llama layouts of the oracle matrix (GPT-2 and GPT-NeoX blocks,
    sliding-window and soft-capped Gemma-2, gpt-oss's sinks and mixed layers, the VLMs' language models),
    with one finite row per head."""
    from workbench.report.census import run_census

    lm = load_model(str(save_tiny(arch, tmp_path / arch)))
    res = run_census(lm, n_samples=2, seq_len=48, out_dir=None, progress=False)
    assert len(res.heads) == lm.spec.n_layers * lm.spec.n_heads
    assert {"attention", "sinks", "retrieval", "head_types"} <= set(res.summary)
    assert res.heads[["first_token_mass", "entropy", "mean_distance"]].notna().all().all()
    assert ((res.heads.first_token_mass >= 0) & (res.heads.first_token_mass <= 1)).all()
