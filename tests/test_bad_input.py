"""The bad-input table (docs/bad_input.md): every CLI command, every class of bad input, exit code 2 and
exactly one line on stderr (``error: ...``) naming the problem and the fix, never a traceback.

Rows run in-process through :func:`workbench.cli.main` (the function the installed ``workbench`` script
calls) on a tiny random-weight Llama saved with SmolLM2's tokenizer; a few rows also run through the
installed entry point in a subprocess, and two use the real SmolLM2 (slow).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_POS = 64  # the tiny model's context window

# (command, class of bad input, argv with {tiny} / {tmp} placeholders, a substring of the one-line error)
ROWS: list[tuple[str, str, str, str]] = [
    # mistyped options and commands
    ("(none)", "unknown command", "bogus", "No such command"),
    ("models", "mistyped option", "models --jsn", "No such option"),
    ("trace", "mistyped option", "trace --promt hi", "No such option"),
    ("census", "mistyped option", "census --sample 2", "No such option"),
    ("sinks", "mistyped option", "sinks --sample 2", "No such option"),
    ("calibrate", "mistyped option", "calibrate --bta 0.3", "No such option"),
    ("retrieval", "mistyped option", "retrieval --lenghts 64", "No such option"),
    ("ablate", "mistyped option", "ablate --head 0.1", "No such option"),
    ("masking-test", "mistyped option", "masking-test --k 5", "No such option"),
    ("heads", "mistyped option", "heads --sample 2", "No such option"),
    ("patch", "mistyped option", "patch --tsk ioi", "No such option"),
    ("probe", "mistyped option", "probe --layr 1", "No such option"),
    ("dashboard", "mistyped option", "dashboard --server.port 1", "No such option"),
    ("vision", "mistyped option", "vision --image 2", "No such option"),
    ("hallucination", "mistyped option", "hallucination --methd vhr", "No such option"),
    ("study run", "mistyped option", "study run x.toml --resum", "No such option"),
    ("reproduce", "mistyped option", "reproduce --quik", "No such option"),
    ("reproduce", "unknown step", "reproduce --only nosuch --out {tmp}/r", "matches no step"),
    ("trace", "wrong type", "trace --prompt hi --budget-mb lots", "budget-mb"),
    ("census", "wrong type", "census --samples two", "samples"),
    # unknown model
    ("trace", "unknown model", "trace --model no-such-model --prompt hi", "unknown model"),
    ("census", "unknown model", "census --model no-such-model", "unknown model"),
    ("sinks", "unknown model", "sinks --model no-such-model", "unknown model"),
    ("calibrate", "unknown model", "calibrate --model no-such-model --heads 0.1", "unknown model"),
    ("retrieval", "unknown model", "retrieval --model no-such-model", "unknown model"),
    ("ablate", "unknown model", "ablate --model no-such-model --heads 0.1", "unknown model"),
    ("masking-test", "unknown model", "masking-test --model no-such-model", "unknown model"),
    ("heads", "unknown model", "heads --model no-such-model", "unknown model"),
    ("patch", "unknown model", "patch --model no-such-model", "unknown model"),
    ("probe", "unknown model", "probe --model no-such-model", "unknown model"),
    ("dashboard", "unknown model", "dashboard --model no-such-model", "unknown model"),
    ("vision", "unknown model", "vision --model no-such-model", "unknown model"),
    ("hallucination", "unknown model", "hallucination --model no-such-model", "unknown model"),
    ("vision", "text-only model", "vision --model {tiny}", "text-only model"),
    # layers, heads, windows
    ("trace", "layer out of range", "trace --model {tiny} --prompt hi --layers 5", "layer 5 is out of range"),
    ("trace", "malformed layers", "trace --model {tiny} --prompt hi --layers x", "--layers"),
    ("trace", "malformed layer range", "trace --model {tiny} --prompt hi --layers 1-", "--layers"),
    ("trace", "head out of range", "trace --model {tiny} --prompt hi --heads 4", "head 4 is out of range"),
    ("trace", "negative head", "trace --model {tiny} --prompt hi --heads -1", "--heads"),
    ("trace", "malformed window", "trace --model {tiny} --prompt hi --window 3", "--window"),
    ("trace", "empty window", "trace --model {tiny} --prompt 'a b c d' --window 3:2", "--window"),
    ("trace", "window past the prompt", "trace --model {tiny} --prompt hi --window 40:50", "--window"),
    ("trace", "unknown statistic", "trace --model {tiny} --prompt hi --stats receved", "unknown statistics"),
    ("trace", "bad sample rows", "trace --model {tiny} --prompt hi --sample-rows 0 --stats received", "--sample-rows"),
    ("calibrate", "head out of range", "calibrate --model {tiny} --heads 9.0", "out of range"),
    ("calibrate", "malformed heads", "calibrate --model {tiny} --heads 1:x", "head"),
    ("calibrate", "beta out of range", "calibrate --model {tiny} --heads 0.1 --beta 2", "beta"),
    ("ablate", "malformed heads", "ablate --model {tiny} --lengths 48 --heads retrieval:x", "cannot read head"),
    ("ablate", "head out of range", "ablate --model {tiny} --lengths 48 --heads 7.0 --scores {tmp}", "out of range"),
    ("ablate", "unknown kind", "ablate --model {tiny} --heads 0.1 --kind half --scores {tmp}", "kind"),
    ("ablate", "unknown phase", "ablate --model {tiny} --heads 0.1 --phase later --scores {tmp}", "phase"),
    ("masking-test", "malformed ks", "masking-test --model {tiny} --ks 5,x", "ks"),
    ("masking-test", "unknown kind", "masking-test --model {tiny} --kinds zero,half", "kind"),
    ("probe", "layer out of range", "probe --model {tiny} --layer 7", "layer 7"),
    ("probe", "unknown site", "probe --model {tiny} --layer 1 --site mlp", "site"),
    ("probe", "head out of range", "probe --model {tiny} --layer 1 --site z --head 9", "head 9"),
    ("probe", "unknown task", "probe --model {tiny} --layer 1 --task parity", "task"),
    ("patch", "unknown task", "patch --model {tiny} --task parity", "task"),
    ("retrieval", "malformed lengths", "retrieval --model {tiny} --lengths 64,abc", "lengths"),
    ("retrieval", "depth out of range", "retrieval --model {tiny} --lengths 48 --depths 150", "depth"),
    ("retrieval", "length past the context window", "retrieval --model {tiny} --lengths 4096", "context"),
    ("retrieval", "needles out of range", "retrieval --model {tiny} --needles 0", "--needles"),
    ("hallucination", "unknown method", "hallucination --method magic", "method"),
    ("hallucination", "unknown split", "hallucination --split weird", "split"),
    ("census", "non-positive samples", "census --model {tiny} --samples 0", "samples"),
    ("census", "unknown section", "census --model {tiny} --seq-len 32 --sections bogus", "section"),
    ("sinks", "non-positive samples", "sinks --model {tiny} --samples 0", "samples"),
    ("heads", "non-positive samples", "heads --model {tiny} --samples 0", "samples"),
    ("dashboard", "port out of range", "dashboard --port 70000", "port"),
    # prompts
    ("trace", "empty prompt", "trace --model {tiny} --prompt ''", "empty"),
    ("trace", "whitespace prompt", "trace --model {tiny} --prompt '   '", "empty"),
    ("trace", "prompt past the context window", "trace --model {tiny} --file {tmp}/long.txt", "context window"),
    ("trace", "both prompt and file", "trace --model {tiny} --prompt hi --file {tmp}/long.txt", "exactly one"),
    # files
    ("trace", "missing file", "trace --model {tiny} --file {tmp}/nope.txt", "does not exist"),
    ("trace", "binary file", "trace --model {tiny} --file {tmp}/binary.txt", "UTF-8"),
    ("trace", "a directory as file", "trace --model {tiny} --file {tmp}", "not a file"),
    ("trace", "empty file", "trace --model {tiny} --file {tmp}/empty.txt", "empty"),
    ("retrieval", "missing haystack", "retrieval --model {tiny} --haystack {tmp}/nope.txt", "does not exist"),
    ("retrieval", "binary haystack", "retrieval --model {tiny} --haystack {tmp}/binary.txt", "UTF-8"),
    ("retrieval", "missing needle file", "retrieval --model {tiny} --needle-file {tmp}/nope.jsonl", "does not exist"),
    ("retrieval", "binary needle file", "retrieval --model {tiny} --needle-file {tmp}/binary.txt", "UTF-8"),
    ("retrieval", "malformed needle JSON", "retrieval --model {tiny} --needle-file {tmp}/bad.jsonl", "JSON"),
    ("retrieval", "needle with unknown key", "retrieval --model {tiny} --needle-file {tmp}/unknown_key.jsonl", "colour"),
    ("retrieval", "needle with wrong type", "retrieval --model {tiny} --needle-file {tmp}/wrong_type.jsonl", "answer"),
    ("ablate", "missing scores", "ablate --model {tiny} --lengths 48 --heads retrieval:top-3 --scores {tmp}/nope", "retrieval"),
    ("masking-test", "missing scores", "masking-test --model {tiny} --lengths 48 --scores {tmp}/nope", "retrieval"),
    ("calibrate", "binary checkpoint", "calibrate --model {tiny} --search --checkpoint {tmp}/binary.txt", "checkpoint"),
    ("calibrate", "malformed checkpoint", "calibrate --model {tiny} --search --checkpoint {tmp}/bad.jsonl", "checkpoint"),
    ("retrieval", "length past the context window (real prompt)", "retrieval --model {tiny} --lengths 48,65", "context window"),
    ("dashboard", "missing trace directory", "dashboard --trace {tmp}/nope", "does not exist"),
    ("dashboard", "missing census directory", "dashboard --census {tmp}/nope", "does not exist"),
    ("study run", "missing spec", "study run {tmp}/nope.toml", "does not exist"),
    ("study run", "binary spec", "study run {tmp}/binary.txt", "UTF-8"),
    ("study run", "malformed TOML", "study run {tmp}/bad.toml", "not valid TOML"),
    ("study run", "unknown key in spec", "study run {tmp}/unknown_key.toml", "colour"),
    ("study run", "wrong type in spec", "study run {tmp}/wrong_type.toml", "seed"),
]

NEEDLE = '{"name": "n1", "sentence": "The secret is 42.", "question": "What is the secret?", "answer": "42"}'
STUDY = '''name = "bad"
model = "smollm2-135m"
ablations = ["zero"]
[head_sets.a]
source = "explicit"
heads = [[0, 1]]
[tasks.t]
kind = "needle"
'''


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("bad-files"))


def make_tiny_dir(out: Path) -> Path:
    """A tiny random Llama (2 layers x 4 heads, 64-token context) saved with SmolLM2's tokenizer in ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.core.models import cache_dir

    src = cache_dir() / "smollm2-135m"
    if not (src / "tokenizer.json").exists():
        from workbench import load_model

        load_model("smollm2-135m")  # converts the preset (and its tokenizer) on first use
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=MAX_POS,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, out / f)
    return out


def make_files(d: Path) -> Path:
    """The bad files of the table in ``d``."""
    (d / "binary.txt").write_bytes(b"\xff\xfe\x00\x81binary\x00")
    (d / "empty.txt").write_text("  \n")
    (d / "long.txt").write_text("the quick brown fox " * 100)
    (d / "bad.jsonl").write_text(NEEDLE + "\n{not json\n")
    (d / "unknown_key.jsonl").write_text(NEEDLE[:-1] + ', "colour": "red"}\n')
    (d / "wrong_type.jsonl").write_text(NEEDLE.replace('"42"}', "42}") + "\n")
    (d / "bad.toml").write_text("name = \n[[[")
    (d / "unknown_key.toml").write_text(STUDY + 'colour = "red"\n')
    (d / "wrong_type.toml").write_text(STUDY.replace('ablations = ["zero"]', 'ablations = ["zero"]\nseed = "three"'))
    return d


def _argv(row_argv: str, tiny: Path, tmp: Path) -> list[str]:
    import shlex

    return shlex.split(row_argv.format(tiny=tiny, tmp=tmp))


def check_one_line(rc: int, err: str, expect: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit {rc}, stderr: {err[-2000:]}"
    assert "Traceback" not in err and "╭" not in err, err[-2000:]
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err[-2000:]}"
    assert lines[0].startswith("error: "), lines[0]
    assert expect.lower() in lines[0].lower(), f"{expect!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("command,what,argv,expect", ROWS, ids=[f"{r[0]}: {r[1]}" for r in ROWS])
def test_bad_input_row(command, what, argv, expect, tiny_dir, files, capfd, monkeypatch):
    from workbench.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(files)  # default output folders (reports/) land in the temporary directory
    rc = main(_argv(argv, tiny_dir, files))
    out, err = capfd.readouterr()
    check_one_line(rc, err, expect)


def test_table_covers_every_command():
    """Every command `workbench --help` lists has rows, and the docs table lists exactly the rows."""
    from workbench import cli

    cli._load_commands()
    names = {c.name or c.callback.__name__ for c in cli.app.registered_commands}
    names |= {f"{g.name} {c.name}" for g in cli.app.registered_groups for c in g.typer_instance.registered_commands}
    assert names <= {r[0] for r in ROWS}, names - {r[0] for r in ROWS}
    doc = (ROOT / "docs" / "bad_input.md").read_text()
    for command, what, argv, _ in ROWS:
        assert f"`workbench {argv}`".replace("{tiny}", "TINY").replace("{tmp}", "TMP") in doc, argv


SUBPROCESS_ROWS = [r for r in ROWS if r[1] in ("mistyped option", "unknown command")][:3] + [
    r for r in ROWS if r[1] in ("binary spec", "malformed window")]


@pytest.mark.parametrize("command,what,argv,expect", SUBPROCESS_ROWS, ids=[f"{r[0]}: {r[1]}" for r in SUBPROCESS_ROWS])
def test_bad_input_through_the_installed_entry_point(command, what, argv, expect, tiny_dir, files):
    exe = Path(sys.executable).with_name("workbench")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "workbench.cli"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    p = subprocess.run(cmd + _argv(argv, tiny_dir, files), capture_output=True, text=True, env=env, cwd=files,
                       timeout=600)
    check_one_line(p.returncode, p.stderr, expect)


@pytest.mark.slow
@pytest.mark.parametrize("argv,expect", [
    ("trace --prompt '  ' --model smollm2-135m", "empty"),
    ("trace --model smollm2-135m --prompt hi --layers 30", "layer 30 is out of range"),
])
def test_bad_input_on_smollm2(argv, expect, files, capfd, monkeypatch, smollm2):
    from workbench.cli import main

    monkeypatch.chdir(files)
    rc = main(_argv(argv, Path("."), files))
    check_one_line(rc, capfd.readouterr()[1], expect)
