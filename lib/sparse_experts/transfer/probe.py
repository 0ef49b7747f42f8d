"""A linear probe: multinomial logistic regression on frozen features, fitted on train, scored on test.

Shapes: N train examples, N_test test examples, D features, Y classes (those present in the train labels).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

MAX_ITER = 5000
"""lbfgs iterations allowed: far more than 800 x 64 standardised features need (they converge in ~100s)."""


@dataclass(frozen=True)
class ProbeResult:
    """Test ``accuracy`` (fraction of 1), ``correct`` bool [N_test] (was the probe right on each test
    example) and ``predictions`` int [N_test] (the predicted class), in the test set's order; ``iterations``
    the lbfgs iterations the fit took."""

    accuracy: float
    correct: np.ndarray
    predictions: np.ndarray
    iterations: int


def _features(name: str, value) -> np.ndarray:
    x = np.asarray(value)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty [examples, features] array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype={x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(
            f"{name} holds {int((~np.isfinite(x)).sum())} NaN/inf values (first at [{bad[0]}, {bad[1]}]: "
            f"{x[tuple(bad)]}); features must be finite"
        )
    return x


def _labels(name: str, value, count: int, features_name: str) -> np.ndarray:
    y = np.asarray(value)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype={y.dtype}")
    if len(y) != count:
        raise ValueError(f"{name} has {len(y)} labels but {features_name} has {count} rows: they must agree")
    return y.astype(np.int64)


def linear_probe(train_features, train_labels, test_features, test_labels, *, c: float = 1.0) -> ProbeResult:
    """Fit a multinomial logistic regression (lbfgs, L2 penalty of inverse strength ``c``) on
    ``train_features [N, D]`` with ``train_labels [N]`` and score it on ``test_features [N_test, D]`` with
    ``test_labels [N_test]``.

    Features are standardised with the mean and standard deviation of the train features only (a feature
    constant over train is centred, not scaled). A test class absent from train is never predicted, so its
    examples count as wrong. Raises ValueError, naming the argument and value, for shapes or lengths that
    disagree, NaN/inf features, non-integer labels, fewer than 2 classes in ``train_labels`` or ``c`` not
    a positive finite number; RuntimeError if lbfgs does not converge within :data:`MAX_ITER` iterations.
    """
    x_train = _features("train_features", train_features)
    x_test = _features("test_features", test_features)
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError(
            f"test_features has {x_test.shape[1]} features per example but train_features has "
            f"{x_train.shape[1]}: they must come from the same model"
        )
    y_train = _labels("train_labels", train_labels, len(x_train), "train_features")
    y_test = _labels("test_labels", test_labels, len(x_test), "test_features")
    classes = np.unique(y_train)
    if len(classes) < 2:
        raise ValueError(
            f"train_labels holds {len(classes)} class ({classes.tolist()}): a probe needs at least 2 classes"
        )
    if isinstance(c, bool) or not isinstance(c, numbers.Real) or not (math.isfinite(c) and c > 0):
        raise ValueError(f"c={c!r} is not allowed; expected a positive finite number")

    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    classifier = LogisticRegression(C=float(c), solver="lbfgs", max_iter=MAX_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            classifier.fit((x_train - mean) / std, y_train)
        except ConvergenceWarning as warning:
            raise RuntimeError(
                f"the linear probe did not converge in {MAX_ITER} lbfgs iterations (c={c}): {warning}"
            ) from None
    predictions = classifier.predict((x_test - mean) / std).astype(np.int64)
    correct = predictions == y_test
    for array in (predictions, correct):
        array.flags.writeable = False
    return ProbeResult(
        accuracy=float(correct.mean()),
        correct=correct,
        predictions=predictions,
        iterations=int(np.max(classifier.n_iter_)),
    )
