"""Reports: the head census and its sections, the sinks and vision reports, figures and HTML.

* :mod:`.census`: per-head statistics over real text, as tables and a page.
* :mod:`.sinks_report` / :mod:`.vision_report` / :mod:`.retrieval_section`: report builders.
* :mod:`.comparison`: before/after comparison of an intervention.
* :mod:`.viz`: plotly figures, HTML pages and number formatting (one import for :mod:`.viz_tokens`,
  :mod:`.viz_maps`, :mod:`.viz_charts` and :mod:`.viz_pages`).
"""
