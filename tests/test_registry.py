"""One intervention registry: every intervention of the workbench, with the scope front ends filter on."""
from __future__ import annotations

import pytest
import torch

from workbench.core.errors import WorkbenchError
from workbench.interventions.registry import SCOPES, available_interventions, build_intervention


def test_registry_holds_every_intervention_with_its_scope():
    specs = available_interventions()
    assert {k: v.scope for k, v in specs.items()} == {
        "head ablation": "heads", "act calibration": "heads", "massive activation edit": "residual",
        "vhr": "vlm-input", "var": "vlm-input"}
    assert all(s.scope in SCOPES and s.description for s in specs.values())
    from workbench.interventions.ablation import KINDS

    assert tuple(specs["head ablation"].params[0].choices) == KINDS  # what studies and `workbench ablate` accept


def test_scope_requirements_are_one_line_errors(tiny_lm):
    with pytest.raises(WorkbenchError, match="pass inp=VLMInput"):
        build_intervention("vhr", tiny_lm)
    with pytest.raises(WorkbenchError, match="at least one"):
        build_intervention("head ablation", tiny_lm, [])


def test_hallucination_builds_vhr_and_var_from_the_registry(monkeypatch):
    """`workbench hallucination --method vhr/var` goes through build_intervention (the one registry)."""
    import workbench.tasks.hallucination as H
    import workbench.interventions.registry as R

    seen = []

    class Fake:
        def applied(self):
            import contextlib

            return contextlib.nullcontext()

    monkeypatch.setattr(R, "build_intervention", lambda name, lm, inp=None, **params: seen.append((name, inp)) or Fake())
    for m in ("vhr", "var"):
        H.intervention(object(), "INPUT", m)
    assert seen == [("vhr", "INPUT"), ("var", "INPUT")]


@pytest.mark.slow
def test_massive_activation_edit_from_the_registry_changes_smollm2(smollm2):
    """The dashboard's path: build by name, compare before/after on a prompt; the edit changes the next token."""
    from workbench.report.comparison import compare_intervention

    iv = build_intervention("massive activation edit", smollm2, mode="zero", samples=2)
    ids = smollm2.encode("The capital of France is Paris. The capital of Italy is")
    res = compare_intervention(smollm2, iv, ids, max_new_tokens=1)
    assert iv.edited > 0 and res.kl > 1e-3
