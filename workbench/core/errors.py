"""Errors raised by the workbench.

Every error names the problem and the fix in one line, so the CLI can print
``str(err)`` and exit with status 2 without a traceback.
"""
from __future__ import annotations


class WorkbenchError(Exception):
    """Base class of every error the workbench raises on bad input."""


class UnknownModelError(WorkbenchError):
    """The model name is neither a preset, a local directory, nor a loadable Hugging Face id."""


class MissingModelPackageError(WorkbenchError):
    """A preset's weights ship in a Python package that is not installed."""


class UnsupportedArchitectureError(WorkbenchError):
    """The model's attention does not go through transformers' pluggable attention interface."""


class HeadIndexError(WorkbenchError, IndexError):
    """A layer or head index lies outside the model."""


class ContextTooLongError(WorkbenchError):
    """A prompt is longer than the model's context window."""


class MemoryBudgetError(WorkbenchError, MemoryError):
    """A requested full attention map would exceed the memory budget."""


class TraceFileError(WorkbenchError):
    """A trace directory is missing, corrupt, or not a workbench trace."""


class NeedleNotFoundError(WorkbenchError):
    """The needle's answer tokens cannot be located in the tokenised context."""
