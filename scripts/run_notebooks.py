"""Execute the notebooks in place and commit-ready: every output, figures with static PNGs.

    WORKBENCH_NOTEBOOK_PNG=1 is set for the kernel, so figures carry plotly's JSON and a PNG
    (kaleido + the apt chromium); a code host shows the PNG. Usage:

    python scripts/run_notebooks.py [NOTEBOOK ...]   # default: notebooks/*.ipynb

Prints the wall time of each notebook. CI runs the same notebooks without PNGs (tests/test_notebooks.py).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(paths: list[Path]) -> None:
    import nbformat
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "kernels" / "workbench"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "workbench", "language": "python"}))
        os.environ["JUPYTER_PATH"] = tmp
        os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["WORKBENCH_NOTEBOOK_PNG"] = "1"
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            t0 = time.perf_counter()
            NotebookClient(nb, kernel_name="workbench", timeout=900,
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
            nbformat.write(nb, path)
            print(f"{path.name}: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("*.ipynb")))
