"""One pass per input: the census and the sinks report run each text window exactly once, and the analyzers fed
by that one pass give what each analyzer gives when it runs the windows itself.

The count is of the forward passes that reach the model (:class:`workbench.core.passes.ForwardLog`, a forward
pre-hook that records the token ids of every batch row); a window counts as run by a row that is the window
or a prefix of it (the same tokens at the same positions).
"""
from __future__ import annotations

import torch


def _tiny_lm():
    from conftest import make_tiny_lm
    from tests.test_sinks import CharTok

    torch.manual_seed(0)
    lm = make_tiny_lm(n_layers=2, n_heads=4, n_kv_heads=2, vocab=97, max_pos=512)
    lm.tokenizer = CharTok()
    return lm


def test_census_runs_each_window_once_and_its_sections_keep_their_numbers():
    from workbench.analyzers.head_types import head_type_scores
    from workbench.analyzers.sinks import head_table, received_attention
    from workbench.core.passes import ForwardLog
    from workbench.core.tracer import Tracer
    from workbench.report.census import run_census
    from workbench.tasks.text import token_windows

    lm = _tiny_lm()
    n, seq = 5, 48  # more windows than the head-type section scores (4)
    with ForwardLog(lm) as log:
        res = run_census(lm, n_samples=n, seq_len=seq, out_dir=None, progress=False,
                         sections=["attention", "sinks", "head_types"])
    windows = token_windows(lm.tokenizer, seq, n)
    assert [log.runs(w) for w in windows] == [1] * n
    # the other forward passes are the head-type section's 4 repeated random sequences (one pass each)
    assert log.passes == n + 4 and sum(log.runs(w) for w in windows) == n
    # the same numbers as each analyzer running the windows itself (the old census path)
    heads = res.heads.sort_values(["layer", "head"]).reset_index(drop=True)
    sinks = head_table(received_attention(lm, windows, progress=False))
    for col in ("first_token_sink_share", "hidden_sink_share", "mean_hidden_sinks", "hidden_sink_mass"):
        assert torch.allclose(torch.tensor(heads[col].to_numpy()), torch.tensor(sinks[col].to_numpy()), atol=1e-6), col
    prev = head_type_scores(lm, windows[:4, :256], ("previous_token",))
    assert torch.allclose(torch.tensor(heads.previous_token_score.to_numpy()),
                          torch.tensor(prev.previous_token_score.to_numpy()), atol=1e-6)
    tr = Tracer(lm, stats=("received", "entropy", "distance"))
    ent = torch.stack([tr.run(w[None])["entropy"][:, 0].mean(-1) for w in windows]).mean(0)
    first = torch.stack([tr.run(w[None])["received"][:, 0, :, 0] for w in windows]).mean(0)
    assert torch.allclose(torch.tensor(heads.entropy.to_numpy()).float(), ent.reshape(-1), atol=1e-6)
    assert torch.allclose(torch.tensor(heads.first_token_mass.to_numpy()).float(), first.reshape(-1), atol=1e-6)


def test_head_type_prefix_scorer_equals_a_run_of_the_prefix():
    """Scored inside a pass over longer windows, the first T tokens' scores are those of a T-token run."""
    from workbench.analyzers.head_types import PrefixHeadTypes, head_type_scores
    from workbench.core.passes import run_windows

    lm = _tiny_lm()
    ids = torch.randint(10, 97, (3, 40), generator=torch.Generator().manual_seed(1))
    ids[:, 20:30] = ids[:, 5:15]  # repeats, so duplicate and induction pairs exist
    kinds = ("previous_token", "duplicate_token", "induction")
    col = PrefixHeadTypes(2, 4, kinds, rows=2, prefix=32)
    assert run_windows(lm, ids, [col], batch_size=3, progress=False) == 1
    want = head_type_scores(lm, ids[:2, :32], kinds)
    for k in kinds:
        got, ref = col.frame()[f"{k}_score"].to_numpy(), want[f"{k}_score"].to_numpy()
        assert torch.allclose(torch.tensor(got), torch.tensor(ref), atol=1e-6) and ref.max() > 0


def test_sinks_report_runs_each_train_window_once_and_finds_the_same_massive_activations():
    import pandas as pd

    from workbench.analyzers.massive import massive_activations
    from workbench.core.passes import ForwardLog
    from workbench.report.sinks_report import sinks_report
    from workbench.tasks.text import token_windows
    from tests.test_sinks import CharTok, half_sink_lm

    lm = half_sink_lm()
    with torch.no_grad():  # a massive activation on the character "c" (as tests/test_sinks.py plants it)
        lm.model.model.embed_tokens.weight[10 + ord("c") % 87, 3] = 5000.0
    kw = dict(n_short=4, short_len=64, n_long=3, long_len=96, n_ppl=2, ppl_len=32)
    with ForwardLog(lm) as log:
        res = sinks_report(lm, **kw, out_dir=None, progress=False)
    short, long_ = token_windows(lm.tokenizer, 64, 4, split="train"), token_windows(lm.tokenizer, 96, 3, split="train")
    assert [log.runs(w, prefixes=False) for w in [*short, *long_]] == [1] * 7
    assert res["massive_dims"] == [3] and len(res["perplexity"]) == 3
    heldout = token_windows(lm.tokenizer, 32, 2, split="heldout")
    assert [log.runs(w, prefixes=False) for w in heldout] == [3, 3]  # kept, zeroed, mean: three models
    # the riders find what massive_activations finds running the same windows itself
    from workbench.report.sinks_report import massive_records

    alone_short = massive_activations(lm, short[:2], progress=False)
    alone_long = massive_activations(lm, long_[:1], progress=False, batch_size=1)
    assert res["massive_activations_short"] == massive_records(alone_short)
    pd.testing.assert_frame_equal(pd.DataFrame(res["massive_activations"]), pd.DataFrame(massive_records(alone_long)))
    assert CharTok().decode([10 + ord("c") % 87]) in {m["token"] for m in res["massive_activations"]}
