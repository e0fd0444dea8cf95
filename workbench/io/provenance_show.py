"""Provenance for readers: one line (:func:`describe`) and an HTML page footer that also embeds it as JSON
(:func:`footer_html`)."""
from __future__ import annotations

import html as _html
import json

from .provenance_collect import HTML_SCRIPT_ID, canonical_json


def _short(h: str | None, n: int = 12) -> str:
    return h[:n] if h else "unknown"


def describe(prov: dict | None) -> str:
    """One line: code version and commit, model and weights hash prefix, date, device, seed."""
    if not prov:
        return "no provenance recorded"
    m = prov.get("model") or {}
    dirty = " (uncommitted changes)" if prov.get("git_dirty") else ""
    return (f"workbench {prov.get('workbench_version')} at {_short(prov.get('git_commit'))}{dirty}; "
            f"model {m.get('id', 'none')} (weights {_short(prov.get('weights_sha256'))}); "
            f"{prov.get('date')} on {prov.get('device')} {prov.get('dtype') or ''}; seed {prov.get('seed')}; "
            f"config {_short(prov.get('config_hash'))}").replace("  ", " ")


def footer_html(prov: dict | None) -> str:
    """An HTML footer: code version + commit + dirty flag, model + weights hash prefix, date, device, seed,
    torch/transformers versions, and the configuration in a ``<details>``; embeds ``prov`` as JSON."""
    if not prov:
        return "<footer class='workbench-provenance'><hr><p>provenance not recorded for this page (written before runs recorded their provenance).</p></footer>"
    e = _html.escape
    m = prov.get("model") or {}
    if not isinstance(m, dict):  # a bare model name
        m = {"id": str(m)}
    where = m.get("preset") and f"preset {m['preset']}" or m.get("path") or m.get("id", "none")
    dirty = " <b>with uncommitted changes</b>" if prov.get("git_dirty") else ""
    cfg = json.dumps(prov.get("config") or {}, indent=1, sort_keys=True, default=str)
    data = canonical_json(prov).replace("</", "<\\/")
    return ("<footer class='workbench-provenance' style='font-size:0.85em;color:#444'><hr>"
            f"<p>Made by workbench {e(str(prov.get('workbench_version')))}, commit "
            f"<code>{e(_short(prov.get('git_commit')))}</code>{dirty}; "
            f"model <code>{e(str(m.get('id', 'none')))}</code> ({e(str(where))}), weights sha256 "
            f"<code>{e(_short(prov.get('weights_sha256')))}</code>; "
            f"{e(str(prov.get('date')))} on {e(str(prov.get('device')))} ({e(str(prov.get('dtype')))}); "
            f"seed {e(str(prov.get('seed')))}; torch {e(str(prov.get('torch')))}, transformers "
            f"{e(str(prov.get('transformers')))}.</p>"
            f"<details><summary>configuration (sha256 <code>{e(_short(prov.get('config_hash')))}</code>)</summary>"
            f"<pre>{e(cfg)}</pre></details>"
            f'<script type="application/json" id="{HTML_SCRIPT_ID}">{data}</script></footer>')
