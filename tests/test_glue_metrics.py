"""The GLUE metrics of keras_softkd.metrics (Matthews correlation, F1, glue_scores)
against float64 references written from the definitions, counting in plain loops."""

import math

import numpy as np
import pytest

from keras_softkd import metrics
from keras_softkd.data import GLUE_TASKS

# --------------------------------------------------------------------------
# Independent references: a confusion matrix counted one example at a time.
# --------------------------------------------------------------------------


def confusion_matrix(labels, predictions):
    size = max(max(labels), max(predictions)) + 1
    matrix = [[0] * size for _ in range(size)]
    for y, p in zip(labels, predictions):
        matrix[int(y)][int(p)] += 1
    return matrix


def reference_binary_mcc(labels, predictions):
    """(TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)); 0 when a factor is 0."""
    tp = tn = fp = fn = 0
    for y, p in zip(labels, predictions):
        tp += y == 1 and p == 1
        tn += y == 0 and p == 0
        fp += y == 0 and p == 1
        fn += y == 1 and p == 0
    denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / math.sqrt(denominator)


def reference_mcc(labels, predictions):
    """Gorodkin's K-class MCC, as sklearn.metrics.matthews_corrcoef writes it."""
    matrix = confusion_matrix(labels, predictions)
    size = len(matrix)
    t = [sum(matrix[k][j] for j in range(size)) for k in range(size)]
    p = [sum(matrix[j][k] for j in range(size)) for k in range(size)]
    c = sum(matrix[k][k] for k in range(size))
    s = len(labels)
    numerator = c * s - sum(p[k] * t[k] for k in range(size))
    squares_p = s * s - sum(p[k] ** 2 for k in range(size))
    squares_t = s * s - sum(t[k] ** 2 for k in range(size))
    if squares_p * squares_t == 0:
        return 0.0
    return numerator / math.sqrt(squares_p * squares_t)


def reference_f1(labels, predictions):
    """Harmonic mean of precision and recall of class 1; 0 when undefined."""
    tp = fp = fn = 0
    for y, p in zip(labels, predictions):
        tp += y == 1 and p == 1
        fp += y == 0 and p == 1
        fn += y == 1 and p == 0
    if tp == 0:
        return 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall)


def random_pair(seed, n, k, agreement=0.6):
    """Labels, and predictions that copy them with probability ``agreement``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    copy = rng.random(n) < agreement
    return labels, np.where(copy, labels, rng.integers(0, k, n))


# --------------------------------------------------------------------------
# Against the references on random data
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_binary_mcc_and_f1_match_references(seed):
    labels, predictions = random_pair(seed, n=50 + 37 * seed, k=2, agreement=0.2 * (seed % 5))
    mcc = metrics.matthews_correlation(labels, predictions)
    assert mcc == pytest.approx(reference_binary_mcc(labels, predictions), abs=1e-12)
    assert mcc == pytest.approx(reference_mcc(labels, predictions), abs=1e-12)
    assert metrics.f1_score(labels, predictions) == pytest.approx(
        reference_f1(labels, predictions), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [3, 5])
def test_multiclass_mcc_matches_reference(seed, k):
    labels, predictions = random_pair(seed, n=300, k=k, agreement=0.15 * seed)
    assert metrics.matthews_correlation(labels, predictions) == pytest.approx(
        reference_mcc(labels, predictions), abs=1e-12)


def test_mcc_large_n_is_finite_and_exact():
    labels, predictions = random_pair(0, n=400_000, k=3, agreement=0.8)
    assert metrics.matthews_correlation(labels, predictions) == pytest.approx(
        reference_mcc(labels.tolist(), predictions.tolist()), abs=1e-12)


# --------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------


def test_mcc_edge_cases():
    ones, zeros = np.ones(6, np.int64), np.zeros(6, np.int64)
    mixed = np.array([0, 1, 0, 1, 1, 0])
    assert metrics.matthews_correlation(ones, mixed) == 0.0  # all labels one class
    assert metrics.matthews_correlation(mixed, zeros) == 0.0  # all predictions one class
    assert metrics.matthews_correlation(ones, ones) == 0.0  # both one class
    assert metrics.matthews_correlation(mixed, mixed) == 1.0
    assert metrics.matthews_correlation(mixed, 1 - mixed) == -1.0
    three = np.array([0, 1, 2, 2, 1, 0])
    assert metrics.matthews_correlation(three, three) == pytest.approx(1.0, abs=1e-15)
    assert metrics.matthews_correlation(np.array([0, 2, 2]), np.array([0, 2, 0])) == pytest.approx(
        reference_mcc([0, 2, 2], [0, 2, 0]))  # an absent class changes nothing


def test_f1_edge_cases():
    mixed = np.array([0, 1, 0, 1, 1, 0])
    assert metrics.f1_score(mixed, np.zeros(6, np.int64)) == 0.0  # no positives predicted
    assert metrics.f1_score(np.zeros(6, np.int64), np.zeros(6, np.int64)) == 0.0  # no positives
    assert metrics.f1_score(np.zeros(6, np.int64), mixed) == 0.0  # only false positives
    assert metrics.f1_score(mixed, mixed) == 1.0
    assert metrics.f1_score(mixed, np.ones(6, np.int64)) == pytest.approx(2 * 3 / (2 * 3 + 3))


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.matthews_correlation(np.array([0, 1]), np.array([0])), "same shape"),
    (lambda: metrics.matthews_correlation(np.array([], np.int64), np.array([], np.int64)), "N >= 1"),
    (lambda: metrics.matthews_correlation(np.array([0.5]), np.array([0])), "`labels` must be integers"),
    (lambda: metrics.matthews_correlation(np.array([0]), np.array([-1])), "`predictions` must be >= 0"),
    (lambda: metrics.f1_score(np.array([0, 2]), np.array([0, 1])), "0 or 1"),
    (lambda: metrics.f1_score(np.zeros((2, 1), np.int64), np.zeros((2, 1), np.int64)), "shape"),
])
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------
# glue_scores
# --------------------------------------------------------------------------


def one_hot_logits(predictions, k):
    logits = np.zeros((len(predictions), k))
    logits[np.arange(len(predictions)), predictions] = 1.0
    return logits


@pytest.mark.parametrize("task", list(GLUE_TASKS))
def test_glue_scores_are_the_tasks_metrics_in_percent(task):
    k = GLUE_TASKS[task].num_classes
    labels, predictions = random_pair(11, n=120, k=k, agreement=0.5)
    scores = metrics.glue_scores(task, labels, one_hot_logits(predictions, k))
    assert list(scores) == list(GLUE_TASKS[task].metrics)
    expected = {
        "matthews_correlation": 100 * reference_mcc(labels, predictions),
        "f1": 100 * reference_f1(labels, predictions),
        "accuracy": 100 * sum(int(y == p) for y, p in zip(labels, predictions)) / len(labels),
    }
    for name, value in scores.items():
        assert isinstance(value, float) and value == pytest.approx(expected[name], abs=1e-10), name


def test_glue_scores_ties_go_to_the_lower_class():
    scores = metrics.glue_scores("rte", np.array([0, 1]), np.zeros((2, 2)))
    assert scores == {"accuracy": 50.0}


def test_glue_scores_bad_inputs():
    with pytest.raises(ValueError, match=r"`logits` must have 3 columns for task='mnli'"):
        metrics.glue_scores("mnli", np.array([0, 1]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"`task` must be one of"):
        metrics.glue_scores("stsb", np.array([0, 1]), np.zeros((2, 2)))
