"""keras_softkd.metrics against loop-based float64 references and hand-checked cases."""

import doctest
import math

import numpy as np
import pytest

from keras_softkd import metrics

# --------------------------------------------------------------------------
# Independent references: one example at a time, plain Python where possible.
# --------------------------------------------------------------------------


def reference_top_k_error(labels, logits, k):
    wrong = 0
    for y, z in zip(labels, logits):
        order = np.argsort(-np.asarray(z, dtype=np.float64), kind="stable")
        wrong += int(y) not in order[:k].tolist()
    return wrong / len(labels)


def reference_nll(labels, logits):
    total = 0.0
    for y, z in zip(labels, logits):
        z = [float(v) for v in z]
        top = max(z)
        log_norm = top + math.log(math.fsum(math.exp(v - top) for v in z))
        total += log_norm - z[int(y)]
    return total / len(labels)


def reference_ece(labels, logits, bins):
    """Guo et al.'s loop over bins (lo, hi], with the first bin also taking 0."""
    confidences, correct = [], []
    for y, z in zip(labels, logits):
        z = np.asarray(z, dtype=np.float64)
        probs = np.exp(z - z.max()) / np.sum(np.exp(z - z.max()))
        confidences.append(float(probs.max()))
        correct.append(float(int(np.argmax(z)) == int(y)))
    confidences, correct = np.array(confidences), np.array(correct)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        members = (confidences > lo) & (confidences <= hi)
        if b == 0:
            members |= confidences == 0.0
        if members.any():
            weight = members.sum() / len(labels)
            ece += weight * abs(correct[members].mean() - confidences[members].mean())
    return ece


def random_case(seed, n=200, k=10, scale=2.0, integer=False):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(n, k))
    if integer:  # many ties, to pin the tie-breaking rule
        logits = np.round(logits)
    return rng.integers(0, k, size=n), logits


# --------------------------------------------------------------------------
# Against the references on random data
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("integer", [False, True])
def test_top_k_error_matches_reference(seed, integer):
    labels, logits = random_case(seed, integer=integer)
    for k in (1, 2, 5, 10):
        assert metrics.top_k_error(labels, logits, k=k) == pytest.approx(
            reference_top_k_error(labels, logits, k), abs=0
        )


def test_top1_error_is_one_minus_argmax_accuracy():
    labels, logits = random_case(7, integer=True)
    accuracy = np.mean(np.argmax(logits, axis=1) == labels)
    assert metrics.top_k_error(labels, logits) == pytest.approx(1 - accuracy, abs=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_nll_matches_reference(seed):
    labels, logits = random_case(seed, scale=5.0)
    np.testing.assert_allclose(
        metrics.nll(labels, logits), reference_nll(labels, logits), rtol=1e-12
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bins", [1, 5, 15, 37])
def test_ece_matches_reference(seed, bins):
    labels, logits = random_case(seed, scale=1.0 + seed)
    np.testing.assert_allclose(
        metrics.expected_calibration_error(labels, logits, bins=bins),
        reference_ece(labels, logits, bins),
        rtol=1e-12,
        atol=1e-15,
    )


def test_ece_with_one_bin_is_gap_of_means():
    labels, logits = random_case(11)
    confidence = np.max(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), axis=1)
    accuracy = np.mean(np.argmax(logits, 1) == labels)
    np.testing.assert_allclose(
        metrics.expected_calibration_error(labels, logits, bins=1),
        abs(accuracy - confidence.mean()),
        rtol=1e-12,
    )


def test_evaluate_logits_agrees_with_the_functions():
    labels, logits = random_case(3, k=100)
    result = metrics.evaluate_logits(labels, logits)
    assert result == {
        "test_error": metrics.top_k_error(labels, logits, k=1),
        "test_top5_error": metrics.top_k_error(labels, logits, k=5),
        "test_nll": metrics.nll(labels, logits),
        "test_ece": metrics.expected_calibration_error(labels, logits, bins=15),
    }
    assert all(type(v) is float for v in result.values())


def test_evaluate_logits_has_no_top5_below_five_classes():
    labels, logits = random_case(3, k=4)
    result = metrics.evaluate_logits(labels, logits)
    assert result["test_top5_error"] is None
    assert result["test_error"] == metrics.top_k_error(labels, logits)
    labels, logits = random_case(3, k=5)
    assert metrics.evaluate_logits(labels, logits)["test_top5_error"] == 0.0


# --------------------------------------------------------------------------
# Hand-checkable cases
# --------------------------------------------------------------------------


def test_perfectly_calibrated_ece_is_zero():
    # Confidence 3/4 (bin 12 of 15) with 3 of 4 right, confidence 1/2 (bin 7)
    # with 1 of 2 right: every bin's accuracy equals its confidence.
    logits = np.array([[math.log(3.0), 0.0]] * 4 + [[0.0, 0.0]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 1])
    assert metrics.expected_calibration_error(labels, logits) == pytest.approx(0.0, abs=1e-15)


def test_confident_and_wrong_ece_is_one():
    logits = np.array([[1e4, 0.0, -1e4]] * 3)
    assert metrics.expected_calibration_error(np.array([1, 2, 1]), logits) == 1.0
    assert metrics.top_k_error(np.array([1, 2, 1]), logits) == 1.0


def test_ece_hand_computed_gap():
    # Confidence 0.75 everywhere, accuracy 0.5: ECE = 0.25.
    logits = np.array([[math.log(3.0), 0.0]] * 4)
    assert metrics.expected_calibration_error(np.array([0, 1, 0, 1]), logits) == pytest.approx(0.25)


def test_ece_confidence_on_an_inner_edge_goes_to_the_lower_bin():
    # bins=2, edges 0, 0.5, 1. Example A: tie, confidence exactly 0.5, predicted
    # class 0, right. Example B: confidence 0.75, wrong.
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = np.array([0, 1])
    # A in (0, 0.5]: 1/2 * |1 - 0.5| + 1/2 * |0 - 0.75| = 0.625. (If A went to
    # (0.5, 1] with B, it would be |0.5 - 0.625| = 0.125.)
    assert metrics.expected_calibration_error(labels, logits, bins=2) == pytest.approx(0.625)


def test_ece_confidence_one_goes_to_the_last_bin():
    # Confidence exactly 1.0 and right: the last bin, gap 0.
    logits = np.array([[1e4, 0.0]])
    assert metrics.expected_calibration_error(np.array([0]), logits, bins=10) == 0.0


def test_ties_break_toward_the_lower_index():
    logits = np.zeros((2, 3))
    assert metrics.top_k_error(np.array([0, 1]), logits, k=1) == 0.5
    assert metrics.top_k_error(np.array([1, 2]), logits, k=2) == 0.5


def test_uniform_logits_nll_is_log_k():
    assert metrics.nll(np.arange(7), np.zeros((7, 7))) == pytest.approx(math.log(7), rel=1e-15)


# --------------------------------------------------------------------------
# Saturated and low-precision logits
# --------------------------------------------------------------------------


def test_saturated_logits_give_finite_exact_values():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    assert metrics.nll(np.array([0, 1]), logits) == 0.0
    assert metrics.nll(np.array([2, 2]), logits) == pytest.approx(1e4)
    assert metrics.nll(np.array([1, 0]), logits) == pytest.approx(2e4)
    result = metrics.evaluate_logits(np.array([1, 0]), logits)
    assert all(math.isfinite(v) for v in result.values() if v is not None)
    assert result["test_ece"] == 1.0


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_low_precision_logits_are_computed_in_float64(dtype):
    labels, logits = random_case(5, scale=3.0)
    low = logits.astype(dtype)
    np.testing.assert_allclose(
        metrics.nll(labels, low), reference_nll(labels, low.astype(np.float64)), rtol=1e-12
    )


def test_labels_of_shape_n_by_1_and_integral_floats():
    labels, logits = random_case(2)
    expected = metrics.evaluate_logits(labels, logits)
    assert metrics.evaluate_logits(labels[:, None], logits) == expected
    assert metrics.evaluate_logits(labels.astype(np.float32), logits) == expected


def test_accepts_tensors():
    import keras

    labels, logits = random_case(2)
    expected = metrics.nll(labels, logits)
    got = metrics.nll(keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(logits))
    assert got == pytest.approx(expected, rel=1e-6)  # the tensor is float32


# --------------------------------------------------------------------------
# Argument errors name the argument
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, logits, match",
    [
        (np.array([0, 1, 0]), np.zeros((2, 3)), "`labels`"),
        (np.array([[0, 1]]), np.zeros((2, 3)), "`labels`"),
        (np.array([0, 3]), np.zeros((2, 3)), r"`labels` must be in \[0, K\)"),
        (np.array([-1, 0]), np.zeros((2, 3)), r"`labels` must be in \[0, K\)"),
        (np.array([0.5, 1.0]), np.zeros((2, 3)), "`labels` must be integers"),
        (np.array([0, 1]), np.zeros((2,)), "`logits`"),
        (np.array([], dtype=int), np.zeros((0, 3)), "`logits`"),
        (np.array([0, 1]), np.array([[0.0, np.nan], [0.0, 1.0]]), "`logits` must be finite"),
        (np.array([0, 1]), np.array([[0.0, np.inf], [0.0, 1.0]]), "`logits` must be finite"),
    ],
)
def test_bad_inputs_raise(labels, logits, match):
    for function in (metrics.top_k_error, metrics.nll, metrics.expected_calibration_error,
                     metrics.evaluate_logits):
        with pytest.raises(ValueError, match=match):
            function(labels, logits)


@pytest.mark.parametrize("k", [0, -1, 4, 2.0, True])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="`k`"):
        metrics.top_k_error(np.array([0]), np.zeros((1, 3)), k=k)


@pytest.mark.parametrize("bins", [0, -3, 1.5])
def test_bad_bins_raises(bins):
    with pytest.raises(ValueError, match="`bins`"):
        metrics.expected_calibration_error(np.array([0]), np.zeros((1, 3)), bins=bins)


def test_docstring_examples_run():
    result = doctest.testmod(metrics, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
