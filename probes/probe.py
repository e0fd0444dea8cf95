"""Linear probes with train/test splits and control tasks (Hewitt & Liang 2019).

A probe is a scikit-learn ``LogisticRegression`` (on standardised features) trained to predict a
label of each token position from a vector the model computes there (a head output ``z`` or the
residual stream). Train and test sets are split **by sequence** (``GroupShuffleSplit``), so no
test sequence was seen in training.

**Control task** (Hewitt & Liang 2019, "Designing and interpreting probes with control tasks"):
every token type (token id) gets a random label drawn from the empirical label distribution, and
each position takes the label of its token. A probe that memorises token identity solves the
control task as well as the real one; **selectivity = task accuracy - control accuracy** says how
much of the probe's success needs information beyond token identity. The control probe uses the
same features, split and hyperparameters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workbench.core.errors import WorkbenchError


class ProbeError(WorkbenchError):
    """A probe cannot be trained on this data (e.g. one class only)."""


@dataclass
class ProbeData:
    """Probe inputs: X (n, d) float features, y (n,) int labels, groups (n,) sequence index,
    tokens (n,) token ids (for the control task), and a description of what was probed."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    tokens: np.ndarray
    description: str = ""


@dataclass
class ProbeResult:
    """Accuracies on the held-out sequences; ``selectivity = task_accuracy - control_accuracy``."""

    description: str
    n_train: int
    n_test: int
    positive_rate: float
    majority_accuracy: float
    task_accuracy: float
    task_balanced_accuracy: float
    control_accuracy: float
    control_balanced_accuracy: float
    selectivity: float
    balanced_selectivity: float

    def to_dict(self) -> dict:
        return asdict(self)


def control_labels(tokens: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control task: one random label per token type, drawn from the label distribution of ``y``.

    Returns:
        (n,) labels with ``out[i] == out[j]`` whenever ``tokens[i] == tokens[j]``.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    types, inverse = np.unique(tokens, return_inverse=True)
    per_type = rng.choice(classes, size=len(types), p=counts / counts.sum())
    return per_type[inverse]


def _fit(X, y, train, test, C, max_iter):
    if len(np.unique(y[train])) < 2:
        raise ProbeError("the training split has a single class: use more sequences or another threshold")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced"))
    clf.fit(X[train], y[train])
    pred = clf.predict(X[test])
    return accuracy_score(y[test], pred), balanced_accuracy_score(y[test], pred)


def train_probe(data: ProbeData, test_size: float = 0.3, seed: int = 0, C: float = 0.1,
                max_iter: int = 2000) -> ProbeResult:
    """Train the task probe and its control probe on the same sequence-level split.

    Args:
        data: :class:`ProbeData`.
        test_size: share of sequences held out.
        seed: split and control-label seed.
        C: inverse L2 regularisation of the logistic regression (small C = simple probe, as
            Hewitt & Liang recommend for selectivity).
        class_weight is ``balanced`` (sinks and needles are rare), so balanced accuracy is reported too.
    Raises:
        ProbeError: a single class, or fewer than 2 sequences.
    """
    if len(np.unique(data.groups)) < 2:
        raise ProbeError("probing needs at least 2 sequences for a train/test split")
    if len(np.unique(data.y)) < 2:
        raise ProbeError(f"all labels are {data.y[0]}: nothing to probe ({data.description})")
    split = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(split.split(data.X, data.y, data.groups))
    acc, bacc = _fit(data.X, data.y, train, test, C, max_iter)
    yc = control_labels(data.tokens, data.y, seed)
    cacc, cbacc = _fit(data.X, yc, train, test, C, max_iter)
    pos = float(data.y.mean())
    maj = float(max(data.y[test].mean(), 1 - data.y[test].mean()))
    return ProbeResult(data.description, len(train), len(test), pos, maj, float(acc), float(bacc), float(cacc),
                       float(cbacc), float(acc - cacc), float(bacc - cbacc))
