"""Reading files a user hands in: checked before use, with one-line errors naming the problem and the fix."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import WorkbenchError


def read_text_file(path: str | Path, what: str = "file", max_bytes: int = 256 << 20) -> str:
    """Read a user's text file as UTF-8.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. ``"prompt file"``).
        max_bytes: larger files are refused (default 256 MiB).
    Raises:
        WorkbenchError: missing, not a regular file, too large, binary (NUL bytes) or not UTF-8.
    """
    p = Path(path)
    if not p.exists():
        raise WorkbenchError(f"{what} {p} does not exist: check the path")
    if not p.is_file():
        raise WorkbenchError(f"{what} {p} is not a file (a directory?): give a text file")
    size = p.stat().st_size
    if size > max_bytes:
        raise WorkbenchError(f"{what} {p} is {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit: give a smaller file")
    data = p.read_bytes()
    if b"\x00" in data:
        raise WorkbenchError(f"{what} {p} is binary, not UTF-8 text: give a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise WorkbenchError(f"{what} {p} is not UTF-8 text (bad byte at offset {err.start}): save it as UTF-8") from None
