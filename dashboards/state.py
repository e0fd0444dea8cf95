"""The dashboard's shared pieces: errors shown in the page instead of a crash, and the per-server caches of
the model, traces, census folders and intervention runs (keyed by their inputs)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import streamlit as st

from dashboards import sources as S
from dashboards import views as V

DEFAULT_PROMPT = "The capital of France is Paris. The capital of Italy is"
PLOT_CONFIG = {"displaylogo": False}


@contextlib.contextmanager
def shown_errors(what: str, clear: str | None = None):
    """Show any error inside as an ``st.error`` line instead of crashing the page; drop the stale
    result ``st.session_state[clear]`` so the error replaces it."""
    try:
        yield
    except Exception as err:  # the page must survive any bad input; Streamlit's control flow is BaseException
        if clear:
            st.session_state.pop(clear, None)
        st.error(f"{what}: {err}" if str(err) else f"{what}: {type(err).__name__}")


@st.cache_resource(show_spinner="loading the model (once per server)...")
def get_model(name: str, device: str = "auto", dtype: str = "auto"):
    from workbench import load_model

    return load_model(name, device=device, dtype=dtype)


@st.cache_resource(show_spinner=False, max_entries=4)
def get_trace(path: str, mtime: float):
    return S.open_trace_dir(path)


@st.cache_resource(show_spinner=False, max_entries=8)
def prompt_trace(model_name: str, prompt: str, chat: bool, window: int):
    """A traced prompt (all statistics, maps of the last ``window`` queries), cached by its inputs."""
    from workbench.core.tracer import ALL_STATS, Tracer

    lm = get_model(model_name)
    ids = lm.encode(prompt, chat=chat)
    n = ids.shape[1]
    return Tracer(lm, stats=ALL_STATS, pattern_window=(max(0, n - int(window)), n)).run(ids)


@st.cache_data(show_spinner=False, max_entries=8)
def get_census(path: str, mtime: float):
    c = S.open_census_dir(path)
    return c, V.census_extras(path, c.tables, c.heads, c.summary)


@st.cache_resource(show_spinner=False)
def intervention_results() -> dict:
    """Per-server cache of intervention comparisons by their inputs (a run takes seconds)."""
    return {}


def _mtime(path: str, name: str) -> float:
    f = Path(path).expanduser() / name
    return f.stat().st_mtime if f.exists() else 0.0


@st.cache_resource(show_spinner=False, max_entries=64)
def vision_picture(kind: str, source_key: str, _src, _upload: tuple[str, bytes] | None = None):
    """A Vision-tab image: a held-out scene (``source_key`` ``scene:<i>``) or an upload (``upload:<sha256>``),
    cached by its kind and key (:mod:`dashboards.vision_view`)."""
    from dashboards import vision_view as VV

    if _upload is not None:
        return VV.upload_picture(_src, *_upload)
    return VV.scene_picture(_src, int(source_key.split(":", 1)[1]))


@st.cache_resource(show_spinner=False, max_entries=16)
def vision_result(model_key: tuple, source_key: str, question: str, max_new: int, tau: float, rho: float,
                  _lm, _src, _pixels):
    """One image's vision analysis (:func:`dashboards.vision_view.run_vision`), cached by the model, the image
    key, the question and the parameters (a run takes seconds to a minute on a CPU)."""
    from dashboards import vision_view as VV

    return VV.run_vision(_lm, _src, _pixels, question, max_new, tau, rho)
