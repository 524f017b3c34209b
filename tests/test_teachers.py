"""The teacher distributions of ``keras_softkd.teachers`` and the KL / CE building blocks.

References are float64 NumPy written here from METHODS.md (W 5, 11, 16; P 10, 13),
not calls into the package. Tolerances: the package works in float32, so
probabilities and log-probabilities of size <= ~10 are compared with
``rtol = atol = 1e-6`` (a few float32 unit roundoffs), unless a test says otherwise.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_softkd import losses, teachers

BACKEND = keras.backend.backend()
TOL = dict(rtol=1e-6, atol=1e-6)


def to_numpy(x):
    return ops.convert_to_numpy(ops.cast(x, "float32")).astype(np.float64)


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    return z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


def np_one_hot(y, k):
    return np.eye(k)[np.asarray(y)]


def make(k=10, batch=5, n=None, scale=3.0, seed=0):
    rng = np.random.default_rng([seed, k, batch])
    y = rng.integers(0, k, batch)
    shape = (batch, k) if n is None else (n, batch, k)
    return y, np_one_hot(y, k), scale * rng.standard_normal(shape)


def np_w16(p, teacher_logits, t, gamma):
    """W 16 written literally (probabilities; fine for moderate logits)."""
    qhat = np.exp(np_log_softmax(np.asarray(teacher_logits) / t))
    qc = np.sum(qhat * p, axis=-1, keepdims=True)
    return np.where(p == 1, gamma, (1 - gamma) * qhat / (1 - qc))


# --------------------------------------------------------------------------
# uniform and teacher_correction (W 5, 11)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 10, 100])
def test_uniform(k):
    _, p, _ = make(k)
    q = np.exp(to_numpy(teachers.uniform(p)))
    assert q.shape == p.shape
    np.testing.assert_allclose(q, 1.0 / k, **TOL)


@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("gamma", [0.0, 0.025, 0.25, 0.9, 1.0])
def test_teacher_correction_matches_w11(k, gamma):
    y, p, _ = make(k)
    q = np.exp(to_numpy(teachers.teacher_correction(p, gamma)))
    expected = np.where(p == 1, gamma, (1 - gamma) / (k - 1))
    np.testing.assert_allclose(q, expected, **TOL)
    np.testing.assert_allclose(q.sum(-1), 1.0, **TOL)
    np.testing.assert_allclose(q[np.arange(len(y)), y], gamma, **TOL)


@pytest.mark.parametrize("k", [2, 10, 100])
def test_teacher_correction_with_gamma_one_over_k_is_uniform(k):
    _, p, _ = make(k)
    np.testing.assert_allclose(
        to_numpy(teachers.teacher_correction(p, 1.0 / k)), to_numpy(teachers.uniform(p)), **TOL
    )
    # and so is LsrKD-TC's loss (W 12 -> W 10)
    y, _, z = make(k, seed=1)
    np.testing.assert_allclose(
        to_numpy(losses.lsrkd(y, z, 0.1, 3.0, gamma=1.0 / k)),
        to_numpy(losses.lsrkd(y, z, 0.1, 3.0)),
        rtol=1e-6,
    )


def test_teacher_correction_zero_probabilities_are_minus_inf():
    _, p, _ = make(4)
    log_q = to_numpy(teachers.teacher_correction(p, 1.0))
    assert np.all(log_q[p == 1] == 0.0) and np.all(np.isneginf(log_q[p == 0]))
    log_q = to_numpy(teachers.teacher_correction(p, 0.0))
    assert np.all(np.isneginf(log_q[p == 1]))
    np.testing.assert_allclose(log_q[p == 0], -math.log(3), **TOL)


@pytest.mark.parametrize("gamma", [-0.01, 1.01, float("nan")])
def test_teacher_correction_rejects_gamma(gamma):
    with pytest.raises(ValueError, match=r"`gamma` must be in \[0, 1\]"):
        teachers.teacher_correction(np.eye(3), gamma)


def test_teacher_correction_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        teachers.teacher_correction(np.ones((3, 1)), 0.5)


# --------------------------------------------------------------------------
# memory_replay_correction (W 16)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [None, 1, 3])
@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_memory_replay_correction_rows_sum_to_one_with_gamma_at_true_class(n, gamma, scale):
    y, p, zt = make(10, n=n, scale=scale, seed=2)
    log_q = to_numpy(teachers.memory_replay_correction(p, zt, 3.0, gamma))
    assert log_q.shape == zt.shape
    assert not np.any(np.isnan(log_q)) and not np.any(np.isposinf(log_q))
    q = np.exp(log_q)
    np.testing.assert_allclose(q.sum(-1), 1.0, **TOL)
    np.testing.assert_allclose(q[..., np.arange(len(y)), y], gamma, **TOL)


@pytest.mark.parametrize("n", [None, 3])
@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.9])
def test_memory_replay_correction_matches_w16(n, gamma):
    """Off the true class, qhat'_m = (1 - gamma) qhat_m / (1 - qhat_c): the teacher's
    own ratios between the wrong classes are kept."""
    y, p, zt = make(10, n=n, seed=3)
    q = np.exp(to_numpy(teachers.memory_replay_correction(p, zt, 2.0, gamma)))
    np.testing.assert_allclose(q, np_w16(p, zt, 2.0, gamma), **TOL)


def test_memory_replay_correction_of_a_teacher_certain_of_the_true_class():
    """qhat_c == 1 in float32 and float64: W 16's normaliser 1 - qhat_c is 0, yet the
    wrong classes keep their ratios (a softmax over the classes m != c)."""
    y, p, _ = make(10, seed=4)
    rng = np.random.default_rng(4)
    zt = rng.uniform(-20.0, 0.0, p.shape)
    zt[p == 1] = 1e4
    log_q = to_numpy(teachers.memory_replay_correction(p, zt, 3.0, 0.25))
    assert np.all(np.isfinite(log_q))
    s = np.where(p == 1, -np.inf, zt / 3.0)
    expected_rest = 0.75 * np.exp(np_log_softmax(s))
    q = np.exp(log_q)
    np.testing.assert_allclose(q[p == 0], expected_rest[p == 0], **TOL)
    np.testing.assert_allclose(q[p == 1], 0.25, **TOL)


def test_memory_replay_correction_is_accurate_for_saturated_logits():
    """Saturated teacher logits chosen so that ``z_T / t`` is exact in float32: no
    input rounding, so the corrected log-probabilities (of size ~1-10) must be
    right to float32 precision, not to the float32 spacing at 5000 (~5e-4) that
    a separately rounded logsumexp would leave."""
    k, t, gamma = 10, 2.0, 0.25
    y = np.arange(6) % k
    p = np_one_hot(y, k)
    offsets = np.array([0.0, 1.0, 1.5, 2.0, 3.0, 4.5, 6.0, 8.0, 9.0, 10.0])
    zt = np.stack([1e4 - np.roll(offsets, i) for i in range(6)])  # |z_T| = 1e4
    assert np.array_equal(zt.astype(np.float32) / np.float32(t), zt / t)
    log_q = to_numpy(teachers.memory_replay_correction(p, zt.astype(np.float32), t, gamma))
    s = np.where(p == 1, -np.inf, zt / t)
    expected = np.where(p == 1, math.log(gamma), math.log(1 - gamma) + np_log_softmax(s))
    np.testing.assert_allclose(log_q, expected, rtol=1e-6, atol=2e-6)


def test_memory_replay_correction_passes_no_gradient():
    from test_losses import gradient_or_zero  # the backend's gradient access

    _, p, zt = make(10, n=2, seed=5)
    weights = np.arange(10.0, dtype=np.float32)

    def weighted(logits):
        out = teachers.memory_replay_correction(p, logits, 3.0, 0.3)
        return ops.where(ops.isfinite(out), out, 0.0) * weights

    assert not np.any(gradient_or_zero(weighted, zt))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0.0, gamma=0.5), r"`temperature` must be > 0"),
        (dict(temperature=-1.0, gamma=0.5), r"`temperature` must be > 0"),
        (dict(temperature=3.0, gamma=1.5), r"`gamma` must be in \[0, 1\]"),
        (dict(temperature=3.0, gamma=-0.5), r"`gamma` must be in \[0, 1\]"),
    ],
)
def test_memory_replay_correction_rejects_arguments(kwargs, message):
    _, p, zt = make(4)
    with pytest.raises(ValueError, match=message):
        teachers.memory_replay_correction(p, zt, **kwargs)


# --------------------------------------------------------------------------
# pseudo_kd_target (P 10, 13)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, beta", [(0.2, 1.5), (0.2, 2.5), (1.0, 0.1), (0.0, 1.0)])
def test_pseudo_kd_target_is_p10(alpha, beta):
    """P 10: P*_j = p_j^(a/b) / sum_j' p_j'^(a/b), p = softmax(z), written with powers."""
    _, _, z = make(10, seed=6)
    prob = np.exp(np_log_softmax(z))
    powered = prob ** (alpha / beta)
    expected = powered / powered.sum(-1, keepdims=True)
    star = np.exp(to_numpy(teachers.pseudo_kd_target(z, alpha, beta)))
    np.testing.assert_allclose(star, expected, **TOL)


def test_pseudo_kd_target_with_beta_alpha_tau_is_tempered_softmax():
    """P 13: beta = alpha * tau gives softmax(z / tau)."""
    _, _, z = make(10, seed=7)
    alpha, tau = 0.2, 4.0
    star = np.exp(to_numpy(teachers.pseudo_kd_target(z, alpha, alpha * tau)))
    np.testing.assert_allclose(star, np.exp(np_log_softmax(z / tau)), **TOL)


def test_pseudo_kd_target_limits():
    """P's remarks: beta -> inf gives the uniform distribution, beta -> 0 the one-hot argmax."""
    _, _, z = make(10, seed=8)
    wide = np.exp(to_numpy(teachers.pseudo_kd_target(z, 0.2, 1e6)))
    np.testing.assert_allclose(wide, 0.1, atol=1e-5)
    narrow = np.exp(to_numpy(teachers.pseudo_kd_target(z, 0.2, 1e-4)))
    np.testing.assert_allclose(narrow, np.eye(10)[np.argmax(z, -1)], atol=1e-6)


@pytest.mark.parametrize(
    "alpha, beta, message",
    [(-0.1, 1.0, r"`alpha` must be in \[0, 1\]"), (0.2, 0.0, r"`beta` must be > 0"),
     (0.2, -1.0, r"`beta` must be > 0"), (0.2, float("inf"), r"`beta` must be > 0")],
)
def test_pseudo_kd_target_rejects_arguments(alpha, beta, message):
    with pytest.raises(ValueError, match=message):
        teachers.pseudo_kd_target(np.zeros((2, 3)), alpha, beta)


# --------------------------------------------------------------------------
# Building blocks: cross_entropy and kl_divergence
# --------------------------------------------------------------------------


def test_kl_divergence_sums_over_classes():
    _, _, za = make(100, seed=9)
    _, _, zb = make(100, seed=10)
    la, lb = np_log_softmax(za), np_log_softmax(zb)
    expected = np.sum(np.exp(la) * (la - lb), axis=-1)
    value = to_numpy(losses.kl_divergence(la, lb))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    assert not np.allclose(value, expected / 100, rtol=1e-2)


def test_kl_divergence_zero_log_zero_is_zero():
    with np.errstate(divide="ignore"):
        la = np.log([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])  # -inf entries
    lb = np_log_softmax(np.array([[1.0, 2.0, 3.0], [0.0, -1e4, 5.0]]))
    expected = [0.5 * (math.log(0.5) - lb[0, 0]) + 0.5 * (math.log(0.5) - lb[0, 1]), -lb[1, 0]]
    value = to_numpy(losses.kl_divergence(la.astype(np.float32), lb.astype(np.float32)))
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_cross_entropy_matches_definition():
    _, p, z = make(10, seed=11)
    target = 0.7 * p + 0.3 / 10
    np.testing.assert_allclose(
        to_numpy(losses.cross_entropy(target, z)),
        -np.sum(target * np_log_softmax(z), axis=-1),
        rtol=1e-6,
    )
