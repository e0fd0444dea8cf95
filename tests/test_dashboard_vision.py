"""The dashboard's Vision tab: image uploads, the sink grid, one image's analysis against the analyzers
(digits-vlm, the small fixture) and the tab in the app on effnet-smollm2-vqa (Streamlit AppTest).

The slow tests load their model through :func:`dashboards.state.get_model` (a process-wide
``st.cache_resource``), so the AppTest's "Load model" reuses the same loaded model."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from dashboards import sources as S
from dashboards import vision_view as VV

EASYVQA = VV.ImageSource("easy-vqa", 49, 7, "Describe the image.", "easy-VQA test scenes")
DIGITS = VV.ImageSource("digits", 16, 4, "What digits are in the image?", "digit composites")


def _png(rgb: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode).save(buf, format=fmt)
    return buf.getvalue()


def _png_header(w: int, h: int) -> bytes:
    """A PNG claiming a w x h RGB image: signature, IHDR and an empty IDAT chunk (no pixel data)."""
    import struct
    import zlib

    def chunk(body: bytes) -> bytes:
        return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT")


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# --- uploads and the grid (no model) ------------------------------------------------------------------------


def test_uploaded_image_gets_exactly_the_easyvqa_pixels():
    from workbench.demo import easyvqa as E

    sc = E.scenes("test", 1, VV.HELDOUT_SEED)[0]
    pic = VV.upload_picture(EASYVQA, "scene.png", _png(sc.rgb()))
    assert pic.pixels.shape == (3, 224, 224) and torch.equal(pic.pixels, sc.pixels())
    # the shown image is that tower input un-normalised (to within the uint8 rounding)
    assert np.abs(pic.view.astype(float) / 255 - (sc.pixels().permute(1, 2, 0).numpy() * 0.5 + 0.5)).max() <= 0.5 / 255 + 1e-6
    # a transparent pixel lies on white, as the easy-VQA background; JPEG is read too
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4, :, :] = (255, 0, 0, 255)
    got = S.read_image_upload("a.png", _png(rgba, "RGBA"))
    assert got.shape == (8, 8, 3) and (got[:4] == (255, 0, 0)).all() and (got[4:] == 255).all()
    jpg = VV.upload_picture(EASYVQA, "x.JPG", _png(sc.rgb(), fmt="JPEG"))
    assert jpg.pixels.shape == (3, 224, 224) and float((jpg.pixels - sc.pixels()).abs().mean()) < 0.1
    # digits-vlm: grey (1, 32, 32) in [0, 1]; a white image stays white
    d = VV.upload_pixels(DIGITS, np.full((50, 70, 3), 255, dtype=np.uint8))
    assert d.shape == (1, 32, 32) and torch.allclose(d, torch.ones(1, 32, 32))


def test_bad_image_uploads_give_one_line_errors(monkeypatch):
    ok = _png(np.zeros((16, 16, 3), dtype=np.uint8))
    with pytest.raises(S.UploadError) as e:
        S.read_image_upload("notes.png", b"this is not an image")
    assert "not a PNG or JPEG" in _one_line(e)
    with pytest.raises(S.UploadError) as e:  # a pickle named .png is never unpickled, only rejected
        S.read_image_upload("x.png", b"\x80\x04\x95pickle")
    assert "not a PNG or JPEG" in _one_line(e)
    with pytest.raises(S.UploadError) as e:
        S.read_image_upload("pic.gif", ok)
    assert "only .png, .jpg and .jpeg" in _one_line(e)
    with pytest.raises(S.UploadError) as e:  # the README's limits: 16 MiB, 4096 x 4096 pixels
        S.read_image_upload("big.png", ok + b"\0" * (16 * 2**20 + 1 - len(ok)))
    assert "over the 16 MiB image upload limit" in _one_line(e)
    with pytest.raises(S.UploadError) as e:  # 4096 x 4096 passes the pixel check; having no pixel data, it fails to decode
        S.read_image_upload("edge.png", _png_header(4096, 4096))
    assert "cannot decode edge.png" in _one_line(e)
    with pytest.raises(S.UploadError) as e:  # only the header is read: a 4097 x 4096 image is refused undecoded
        S.read_image_upload("huge.png", _png_header(4097, 4096))
    assert "4097 x 4096 pixels, over the 16,777,216-pixel limit" in _one_line(e)
    noisy = _png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(S.UploadError) as e:  # the header is whole, the pixel data cut short
        S.read_image_upload("cut.png", noisy[: len(noisy) * 3 // 4])
    assert "cannot decode cut.png" in _one_line(e)
    monkeypatch.setattr(S, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(S.UploadError) as e:
        S.read_image_upload("wide.png", ok)
    assert "16 x 16 pixels" in _one_line(e)


def test_text_lm_and_empty_question_are_refused_in_one_line(tiny_lm):
    with pytest.raises(VV.VisionTabError) as e:
        VV.image_source(tiny_lm)
    assert "needs a VLM preset" in _one_line(e) and "effnet-smollm2-vqa" in str(e.value)
    with pytest.raises(VV.VisionTabError) as e:
        VV.scene_picture(EASYVQA, VV.MAX_SCENE + 1)
    assert "out of range" in _one_line(e)
    with pytest.raises(VV.VisionTabError) as e:
        VV.make_input(tiny_lm, EASYVQA, "  ", torch.zeros(3, 224, 224))
    assert "enter a question" in _one_line(e)


def test_sink_grid_marks_tokens_that_are_sinks_at_two_layers():
    # a planted sink table: image token 5 is a sink at layers 1 and 2, token 9 only at layer 2, a text sink at pos 0
    rows = [(0, layer, 10 + i, i, "<image>", 1.0, False) for layer in range(3) for i in range(16)]
    df = pd.DataFrame(rows, columns=["sample", "layer", "pos", "image_index", "token", "phi", "sink"])
    for layer, i, phi in ((1, 5, 21.0), (2, 5, 23.0), (2, 9, 22.0)):
        df.loc[(df.layer == layer) & (df.image_index == i), ["phi", "sink"]] = (phi, True)
    df.loc[len(df)] = (0, 1, 0, -1, "<s>", 24.0, True)
    g = VV.sink_grid(df, 16, 4)
    assert g.loc[g.sink, "image_index"].tolist() == [5]
    assert g.set_index("image_index").loc[[5, 9], "n_layers_sink"].tolist() == [2, 1]
    assert (g.loc[5, "row"], g.loc[5, "col"]) == (1, 1) and g.loc[5, "max_phi"] == 23.0
    fig = VV.sink_grid_figure(np.zeros((32, 32, 3), dtype=np.uint8), g, 4, 20.0)
    assert [(s.x0, s.y0) for s in fig.layout.shapes] == [(0.5, 0.5)]  # one outline, on row 1, col 1
    assert fig.layout.yaxis.autorange == "reversed"  # the image's top row at the top
    assert np.asarray(fig.data[1].z)[1, 1] == 2


# --- one image's analysis against the analyzers (digits-vlm) --------------------------------------------------


def _cached_model(name: str):
    from dashboards.state import get_model

    return get_model(name, "auto", "auto")


def _check_against_analyzers(lm, src, pic, view, question):
    """The view's VHD table equals the analyzers' on the same input; the grid marks the sink detector's tokens."""
    from workbench.analyzers import vision as A
    from workbench.core.vlm import image_positions
    from workbench.tasks.vqa_hallucination import sink_dims

    inp = VV.make_input(lm, src, question, pic.pixels)
    pd.testing.assert_frame_equal(view.per_head, A.head_vhd(A.vhd_table(lm, [inp], progress=False)))
    assert view.vision_aware.equals(A.vision_aware_heads(view.per_head, 10))
    dims = sink_dims(lm)
    assert view.sink_dims == dims
    det = A.SinkDetector(lm, dims, A.TAU)
    with det, torch.no_grad():
        lm.model(input_ids=inp.input_ids, use_cache=False, **inp.kwargs())
    img = image_positions(lm.model, inp.input_ids)
    n_layers = torch.stack([det.sinks[l][0, img] for l in sorted(det.sinks)]).sum(0)
    assert view.grid.n_layers_sink.tolist() == n_layers.tolist()
    assert view.grid.loc[view.grid.sink, "image_index"].tolist() == (n_layers >= VV.SINK_MIN_LAYERS).nonzero().reshape(-1).tolist()


@pytest.mark.slow
def test_run_vision_on_digits_vlm_equals_the_analyzers():
    lm = _cached_model("digits-vlm")
    src = VV.image_source(lm)
    assert (src.kind, src.n_tokens, src.side) == ("digits", 16, 4)
    pic = VV.scene_picture(src, 0)
    from workbench.tasks.hallucination import heldout_images

    assert torch.equal(pic.pixels, heldout_images(1, VV.HELDOUT_SEED)[0].pixels) and pic.view.shape == (224, 224, 3)
    view = VV.run_vision(lm, src, pic.pixels, src.question)
    assert len(view.per_head) == lm.spec.n_layers * lm.spec.n_heads and len(view.grid) == 16
    _check_against_analyzers(lm, src, pic, view, src.question)


# --- the tab in the app on effnet-smollm2-vqa ------------------------------------------------------------------


@pytest.mark.slow
def test_app_vision_tab_runs_a_scene_on_effnet_smollm2_vqa():
    from tests.test_dashboard import _app, _array, _submit, _titles

    lm = _cached_model("effnet-smollm2-vqa")  # the app's Load model below finds it in the same cache
    at = _app()
    at.default_timeout = 600
    at.run()
    at.sidebar.selectbox(key="model_choice").set_value("effnet-smollm2-vqa")
    _submit(at, "Load model")
    assert not at.error and not at.exception, [e.value for e in at.error]
    at.number_input(key="vision_scene").set_value(0).run()
    assert at.text_input(key="vision_question").value == "Describe the image."
    _submit(at, "Run")
    assert not at.error and not at.exception, [e.value for e in at.error]
    titles = _titles(at)
    assert "VHD per head at the first generated token" in titles and any(t.startswith("visual sink tokens") for t in titles)
    view = at.session_state["vision_view"]  # what the tab drew
    assert isinstance(view, VV.VisionView) and any(c.value == view.answer.strip() for c in at.code), [c.value for c in at.code]
    src = VV.image_source(lm)
    pic = VV.scene_picture(src, 0)
    # the drawn heatmap is the view's VHD table, layer by head, layer 0 at the top
    spec = json.loads(at.get("plotly_chart")[titles.index("VHD per head at the first generated token")].proto.spec)
    want = view.per_head.pivot(index="layer", columns="head", values="vhd").to_numpy()
    assert np.allclose(_array(spec["data"][0]["z"]).astype(float), want, rtol=1e-5)
    assert spec["layout"]["yaxis"]["autorange"] == "reversed"
    assert len(view.grid) == 49 and view.grid.row.max() == 6
    _check_against_analyzers(lm, src, pic, view, src.question)
    # a bad upload: one error line, no result
    at.radio(key="vision_mode").set_value("upload an image").run()
    at.file_uploader(key="vision_upload").upload("x.png", b"not an image", "image/png")
    at.run()
    assert not at.exception and [e.value for e in at.error] == ["cannot read the image: x.png is not a PNG or JPEG image"]
    assert "VHD per head at the first generated token" not in _titles(at)
