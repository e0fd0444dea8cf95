"""The one head-set grammar (workbench.core.headsets) and the commands, dashboard and study specs that read it."""
from __future__ import annotations

import random

import pandas as pd
import pytest

from workbench.core.errors import HeadIndexError, WorkbenchError
from workbench.core.headsets import parse_head_set, parse_indices

SCORES = pd.DataFrame({"layer": [0, 1, 2, 2], "head": [1, 2, 3, 0], "score": [0.5, 0.9, 0.05, 0.5]})


def test_items_of_the_grammar():
    assert parse_head_set("3.1, 7.4") == [(3, 1), (7, 4)]
    assert parse_head_set("7:4") == [(7, 4)]  # the dashboard's old spelling
    assert parse_head_set("3.0-3.4") == [(3, h) for h in range(5)]
    assert parse_head_set("3.6-4.2", 5, 8) == [(3, 6), (3, 7), (4, 0), (4, 1), (4, 2)]
    assert parse_head_set("2.*", 4, 3) == [(2, 0), (2, 1), (2, 2)]
    assert parse_head_set("*", 2, 2) == parse_head_set("all", 2, 2) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert parse_head_set("1.1, 0.*, 1.1", 2, 2) == [(1, 1), (0, 0), (0, 1)]  # item order, repeats dropped
    assert parse_head_set("") == []


def test_selections_need_a_source_and_random_is_seeded():
    # top-K: highest score first, ties by lower layer then head
    assert parse_head_set("retrieval:top-3", 3, 4, scores={"retrieval": SCORES}) == [(1, 2), (0, 1), (2, 0)]
    assert parse_head_set("retrieval:top-1", 3, 4, scores={"retrieval": lambda: SCORES}) == [(1, 2)]
    pool = [(a, b) for a in range(3) for b in range(4)]
    got = parse_head_set("random:4", 3, 4, seed=7)
    assert got == sorted(random.Random(7).sample(pool, 4)) and got != parse_head_set("random:4", 3, 4, seed=8)
    with pytest.raises(WorkbenchError, match="needs sinks scores"):
        parse_head_set("sinks:top-2", 3, 4, scores={"retrieval": SCORES})
    with pytest.raises(WorkbenchError, match="more than the 2 spare heads"):
        parse_head_set("random:3", 3, 4, pool=[(0, 0), (0, 1)], pool_name="spare heads")


@pytest.mark.parametrize("bad", ["3-1", "x", "1:x", "retrieval:x", "3.", ".2", "3.1.2", "random:top-3"])
def test_malformed_items_are_one_line_errors(bad):
    with pytest.raises(WorkbenchError) as err:
        parse_head_set(bad, 30, 9)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"cannot read head {bad!r}")


def test_range_checks_and_shape():
    with pytest.raises(HeadIndexError, match="head 30.0 is out of range"):
        parse_head_set("30.0", 30, 9)
    with pytest.raises(HeadIndexError):
        parse_head_set("2.0-2.9", 30, 9)
    with pytest.raises(WorkbenchError, match="end comes before its start"):
        parse_head_set("4.2-3.1")
    with pytest.raises(WorkbenchError, match="needs the model's shape"):
        parse_head_set("3.*")
    assert parse_indices("0,2-3", 4, "layer") == [0, 2, 3] and parse_indices("all", 4, "layer") is None


def test_every_reader_takes_the_grammar():
    from dashboards import sources as S
    from workbench.cli.commands.sinks import parse_heads as calibrate_heads
    from workbench.core.models import parse_heads
    from workbench.studies.retrieval_masking import select_heads

    assert parse_heads("1.*", 2, 3) == calibrate_heads("1.*", 2, 3) == [(1, 0), (1, 1), (1, 2)]
    assert S.parse_heads("3.0-3.1, 7:4") == [(3, 0), (3, 1), (7, 4)]
    # ablate / masking-test: retrieval scores as the source, random heads from the non-retrieval ones (<= 0.1)
    assert select_heads("retrieval:top-2", 3, 4, SCORES) == [(1, 2), (0, 1)]
    assert select_heads("random:1", 3, 4, SCORES, seed=3) == [(2, 3)]
    assert select_heads("2.*", 3, 4) == [(2, 0), (2, 1), (2, 2), (2, 3)]


def test_study_specs_take_the_grammar(tiny_lm):
    from workbench.studies.heads import resolve_head_set
    from workbench.studies.spec import HeadSetSpec, StudySpecError, parse_spec

    hs = HeadSetSpec("manual", "explicit", {"source": "explicit", "heads": "0.1, 1.*"})
    n = tiny_lm.spec.n_heads
    assert resolve_head_set(hs, tiny_lm, {}) == [(0, 1)] + [(1, h) for h in range(n)]
    doc = {"name": "s", "head_sets": {"m": {"source": "explicit", "heads": 3}}, "tasks": {"t": {"kind": "ioi"}}}
    with pytest.raises(StudySpecError, match="must be a list or a str"):
        parse_spec(doc)
