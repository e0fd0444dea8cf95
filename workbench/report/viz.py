"""Plotly figures of attention heads, and the pages they go in: one import for all of them.

The figures live in four modules by job; every name stays importable from here.

* :mod:`.viz_tokens`: tokens and numbers as people read them (:func:`readable_token`, :func:`display_tokens`,
  :func:`format_head`, :func:`format_number`).
* :mod:`.viz_maps`: :func:`attention_map` / :func:`trace_attention_map`: one head's attention rows with token
  labels and hover values; long contexts are max-pooled (and optionally windowed), said in the title;
  :func:`intervention_maps`: before / after an intervention.
* :mod:`.viz_charts`: :func:`layer_head_heatmap` (layer x head grid of any per-head score);
  :func:`received_attention_chart`, :func:`sink_chart`: attention sinks (Gu et al. 2024);
  :func:`massive_activation_chart`: massive activations (Sun et al. 2024); :func:`needle_heatmap`:
  needle-in-a-haystack accuracy over length x depth (Wu et al. 2024); :func:`next_token_chart`.
* :mod:`.viz_pages`: :func:`write_html` (several figures in one page), :func:`markdown_page`,
  :func:`table_html`, :func:`setup_notebook`.
"""
from __future__ import annotations

from .viz_charts import (MASSIVE_COLUMNS, layer_head_heatmap, massive_activation_chart, needle_heatmap,
                         next_token_chart, received_attention_chart, received_maxima, sink_chart)
from .viz_maps import (MAX_HOVER_CELLS, MAX_MAP_SIDE, MAX_TICK_LABELS, attention_map, intervention_maps,
                       trace_attention_map, trace_tokens)
from .viz_pages import (NOTEBOOK_PNG_ENV, PAGE_STYLE, display_heads, markdown_page, plotly_bundle, provenance_footer,
                        setup_notebook, table_html, top_heads, write_html)
from .viz_tokens import (VISIBLE_WHITESPACE, display_token_strings, display_tokens, format_head, format_number,
                         readable_token, token_table, visible_whitespace)

__all__ = [
    "MASSIVE_COLUMNS", "MAX_HOVER_CELLS", "MAX_MAP_SIDE", "MAX_TICK_LABELS", "NOTEBOOK_PNG_ENV", "PAGE_STYLE",
    "VISIBLE_WHITESPACE", "attention_map", "display_heads", "display_token_strings", "display_tokens",
    "format_head", "format_number", "intervention_maps", "layer_head_heatmap", "markdown_page",
    "massive_activation_chart", "needle_heatmap", "next_token_chart", "plotly_bundle", "provenance_footer",
    "readable_token", "received_attention_chart", "received_maxima", "setup_notebook", "sink_chart", "table_html",
    "token_table", "top_heads", "trace_attention_map", "trace_tokens", "visible_whitespace", "write_html",
]
