"""A tracer or intervention that records or changes nothing raises a one-line error saying why."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_lm
from workbench.core.errors import HeadIndexError, UnsupportedArchitectureError, WorkbenchError
from workbench.interventions import HeadAblation
from workbench.interventions.act import ACTCalibration
from workbench.core.tracer import Tracer


def _ids(n=20, seed=0):
    return torch.randint(3, 97, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def eager_lm():
    """The tiny Llama with transformers' own eager attention: nothing goes through the workbench kernel."""
    lm = make_tiny_lm()
    lm.model.config._attn_implementation = "eager"
    for layer in lm.model.model.layers:
        layer.self_attn.config._attn_implementation = "eager"
    return lm


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and len(msg) < 400
    return msg


def test_tracer_on_a_model_without_workbench_attention_raises(eager_lm):
    with pytest.raises(UnsupportedArchitectureError, match="does not run its attention through the workbench") as e:
        Tracer(eager_lm, stats=("received",)).run(_ids())
    _one_line(e.value)
    with pytest.raises(UnsupportedArchitectureError):  # the generate()/context-manager path too
        tr = Tracer(eager_lm, z=True)
        with tr, torch.no_grad():
            eager_lm.model(_ids())
        tr.trace()


def test_intervention_on_a_model_without_workbench_attention_raises(eager_lm):
    with pytest.raises(UnsupportedArchitectureError, match="saw no attention call") as e:
        with torch.no_grad(), HeadAblation([(0, 1)]).applied():
            eager_lm.model(_ids())
    _one_line(e.value)
    with pytest.raises(UnsupportedArchitectureError):
        with torch.no_grad(), ACTCalibration([(0, 1)]).applied():
            eager_lm.model(_ids())


def test_intervention_on_layers_or_heads_that_do_not_exist_raises(tiny_lm):
    with pytest.raises(HeadIndexError, match=r"layers \[5\] never ran"):
        with torch.no_grad(), HeadAblation([(5, 0)]).applied():
            tiny_lm.model(_ids())
    with pytest.raises(HeadIndexError, match="head 9 of layer 1 does not exist"):
        with torch.no_grad(), HeadAblation([(1, 9)]).applied():
            tiny_lm.model(_ids())


def test_decode_phase_without_decode_steps_raises_and_with_them_works(tiny_lm):
    with pytest.raises(WorkbenchError, match="phase='decode' changed nothing"):
        with torch.no_grad(), HeadAblation([(0, 1)], phase="decode").applied():
            tiny_lm.model(_ids(), use_cache=False)
    with torch.no_grad(), HeadAblation([(0, 1)], phase="decode").applied():
        tiny_lm.model.generate(_ids(), max_new_tokens=2, do_sample=False, pad_token_id=0)


def test_tracer_that_records_nothing_raises(tiny_lm):
    with pytest.raises(WorkbenchError, match="asked to record nothing"):
        Tracer(tiny_lm).run(_ids())
    with pytest.raises(WorkbenchError, match="rows_from=50 is past the last query position 19"):
        Tracer(tiny_lm, stats=("entropy",), rows_from=50).run(_ids(20))
    with pytest.raises(WorkbenchError, match="starts past the last query"):
        Tracer(tiny_lm, pattern_window=(30, 40)).run(_ids(20))
    assert "entropy" in Tracer(tiny_lm, stats=("entropy",), rows_from=10).run(_ids(20))  # inside: recorded


def test_layer_interventions_refuse_layers_that_do_not_exist(tiny_lm):
    """VHR and VAR choose layers: validate() names a layer outside the model, and passes the others."""
    from workbench.interventions.vhr import VisionAwareHeadReinforcement

    vhr = VisionAwareHeadReinforcement(torch.zeros(2, 4, 16), layers=[1])
    assert vhr.validate(tiny_lm.spec) is vhr
    with pytest.raises(HeadIndexError, match="layer 5 is out of range"):
        VisionAwareHeadReinforcement(torch.zeros(2, 4, 16), layers=[0, 5]).validate(tiny_lm.spec)
