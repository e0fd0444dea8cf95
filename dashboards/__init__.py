"""The Streamlit dashboard of the workbench (``workbench dashboard`` runs ``dashboards/app.py``).

:mod:`dashboards.sources` holds the page-independent logic (opening traces and census
directories, parsing uploads without pickle, per-head tables of a trace), so it is testable
without Streamlit.
"""
from pathlib import Path

APP_PATH = Path(__file__).with_name("app.py")
