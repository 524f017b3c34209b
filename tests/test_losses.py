"""Every loss of ``keras_softkd.losses`` against the papers' equations.

The reference is an independent float64 NumPy transcription of
``docs/METHODS.md`` written here (never a call into the package): log-softmax
through a stable logsumexp, KL summed over classes with ``0 log 0 = 0``, and
analytic gradients with respect to the student logits. The analytic gradients
are themselves checked against central finite differences of the float64
reference values (``test_reference_gradients_match_finite_differences``).

Reference gradients (rows of ``p``, ``T`` and ``phat`` sum to 1):

* ``d CE(p, softmax(z)) / dz = softmax(z) - p``
* ``d KL(T || softmax(z / t)) / dz = (softmax(z / t) - T) / t`` for a fixed ``T``,
  so ``d [a t^s KL] / dz = a t^(s-1) (q(t) - T)``
* Pseudo-KD, ``P*`` fixed: ``softmax(z) - phat``.

Tolerances (why):

* Values: ``rtol = 1e-5, atol = 1e-5``. The package computes in float32 whatever
  the input dtype, and the reference is evaluated on the *rounded* inputs, so
  only float32 round-off (unit roundoff 6e-8, times a few dozen operations and
  a K = 100 sum) separates them; losses reach 2e4 with saturated logits, hence
  a relative tolerance.
* Gradients: float32 ``rtol = 1e-5 + 2 eps32 S, atol = 1e-6``. The entries are
  probability differences of magnitude <= a few. Any float32 computation of
  ``softmax(z / t)`` rounds ``z / t`` (and its logsumexp) to the float32 spacing at
  that magnitude, an absolute error of up to ``eps32 * S`` in the
  log-probabilities, ``S`` the largest |logit| fed in, hence a relative error of
  the same size in every probability: negligible for random logits
  (``S ~ 12``: 3e-6), 2.4e-3 for saturated ones (``S = 1e4``; 1.5e-4 was seen).
  The values do not need that term: their absolute error is also
  ``~eps32 * S`` but they are themselves of size ``~S``. float16 and bfloat16
  gradients come back in the input dtype, so they carry one extra rounding to
  that dtype: ``rtol`` is raised by twice its unit roundoff (2^-10 for float16,
  2^-7 for bfloat16); ``atol = 1e-6`` covers the float16 subnormal spacing
  (6e-8).
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_softkd import losses, teachers

BACKEND = keras.backend.backend()

# ==========================================================================
# float64 NumPy reference (METHODS.md transcribed)
# ==========================================================================


def np_logsumexp(x, axis=-1, keepdims=True):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - np_logsumexp(z)


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_one_hot(y, k):
    return np.eye(k, dtype=np.float64)[np.asarray(y)]


def np_ce(p, log_q):
    """``CE(p, q) = -sum_k p_k log q_k``, summed over classes."""
    return -np.sum(p * log_q, axis=-1)


def np_kl(log_a, log_b):
    """``KL(a || b) = sum_k a_k (log a_k - log b_k)``, summed over classes, 0 log 0 = 0."""
    a = np.exp(log_a)
    with np.errstate(invalid="ignore"):
        terms = np.where(a > 0, a * (log_a - log_b), 0.0)
    return np.sum(terms, axis=-1)


def np_log(x):
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(x, np.float64))


def log_uniform(p):
    """``u_m = 1 / K`` (W 5)."""
    return np.full_like(p, -math.log(p.shape[-1]))


def log_teacher_correction(p, gamma):
    """``q'_c = gamma``, ``q'_m = (1 - gamma) / (K - 1)`` (W 11)."""
    k = p.shape[-1]
    return np_log(np.where(p == 1, gamma, (1.0 - gamma) / (k - 1)))


def log_memory_replay_correction(p, teacher_logits, t, gamma):
    """W 16 in log space, as METHODS.md prescribes.

    ``log qhat'_m = log(1-g) + log qhat_m - log(1 - qhat_c)`` with
    ``log(1 - qhat_c) = logsumexp_{m != c}(s) - logsumexp(s)``, ``s = z_T / t``.
    """
    s = np.asarray(teacher_logits, np.float64) / t
    log_qhat = np_log_softmax(s)
    log_one_minus_qc = np_logsumexp(np.where(p == 1, -np.inf, s)) - np_logsumexp(s)
    log_other = np_log(1.0 - gamma) + log_qhat - log_one_minus_qc
    return np.where(p == 1, np_log(gamma), log_other)


def ref_ce(p, z):
    log_q = np_log_softmax(z)
    return np_ce(p, log_q), np.exp(log_q) - p


def ref_lsr(p, z, a):
    """W 5, 6: ``CE((1-a) p + a u, q(1))``."""
    smoothed = (1.0 - a) * p + a / p.shape[-1]
    log_q = np_log_softmax(z)
    return np_ce(smoothed, log_q), np.exp(log_q) - smoothed


def ref_distill(p, z, log_teachers, a, t, power):
    """``(1-a) CE(p, q(1)) + a t^power (1/n) sum_i KL(T_i || q(t))`` (W 4, 10, 12-14, 17).

    ``log_teachers`` has shape ``(n, B, K)``.
    """
    log_q1 = np_log_softmax(z)
    log_qt = np_log_softmax(z / t)
    kl = np.mean([np_kl(lt, log_qt) for lt in log_teachers], axis=0)
    value = (1.0 - a) * np_ce(p, log_q1) + a * t**power * kl
    mean_teacher = np.mean(np.exp(log_teachers), axis=0)
    grad = (1.0 - a) * (np.exp(log_q1) - p) + a * t ** (power - 1) * (np.exp(log_qt) - mean_teacher)
    return value, grad


def ref_pseudo_kd(p, z, a, b, frozen_z=None):
    """P 10, 12, 13: ``CE(phat, q(1)) + b KL(P* || U)``, ``P* = softmax(z a / b)`` held fixed.

    ``frozen_z`` (default ``z``) is the logits ``P*`` is computed from: the
    gradient treats ``P*`` as a constant.
    """
    frozen_z = z if frozen_z is None else frozen_z
    log_star = np_log_softmax(frozen_z * a / b)
    phat = (1.0 - a) * p + a * np.exp(log_star)
    log_q = np_log_softmax(z)
    value = np_ce(phat, log_q) + b * np_kl(log_star, log_uniform(p))
    return value, np.exp(log_q) - phat


def ref_tf_reg(p, z, a, t, m=1.0, correct=0.99, form="code"):
    """TF-reg, transcribed from the reference code (yuanli2333/Teacher-free-Knowledge-
    Distillation, my_loss_function.py, loss_kd_regularization) in float64 NumPy:

        teacher_soft = (1 - correct) / (K - 1) everywhere, correct on the label
        (1 - a) * F.cross_entropy(z, y)
          + a * nn.KLDivLoss()(F.log_softmax(z), F.softmax(teacher_soft / T)) * multiplier

    ``KLDivLoss()`` averages over the B x K elements; per example that is the
    KL summed over classes divided by K. ``form="paper"``: Eq. 9, the student at
    temperature ``t``, no multiplier, KL summed over classes.
    """
    k = p.shape[-1]
    designed = np.where(p == 1, correct, (1.0 - correct) / (k - 1))
    log_teacher = np_log_softmax(designed / t)
    log_q1 = np_log_softmax(z)
    if form == "code":
        weight, log_student, dlog = a * m / k, log_q1, 1.0
    else:
        weight, log_student, dlog = a, np_log_softmax(z / t), 1.0 / t
    value = (1.0 - a) * np_ce(p, log_q1) + weight * np_kl(log_teacher, log_student)
    grad = (1.0 - a) * (np.exp(log_q1) - p) + weight * dlog * (np.exp(log_student) - np.exp(log_teacher))
    return value, grad


def ref_cs_kd(p, z, z_partner, t, lam):
    """CS-KD per anchor, docs/REFERENCE_CODE.md 2.3 (alinlab/cs-kd train.py l.95-107, l.130-140):
    ``CE(p, softmax(z)) + lam t^2 KL(softmax(z'/t) || softmax(z/t))``, ``z'`` constant, so
    ``d/dz = softmax(z) - p + lam t (softmax(z/t) - softmax(z'/t))``."""
    log_partner = np_log_softmax(np.asarray(z_partner, np.float64) / t)
    log_anchor = np_log_softmax(z / t)
    log_q1 = np_log_softmax(z)
    value = np_ce(p, log_q1) + lam * t**2 * np_kl(log_partner, log_anchor)
    grad = np.exp(log_q1) - p + lam * t * (np.exp(log_anchor) - np.exp(log_partner))
    return value, grad


def ref_beta_ls(p, z, z_teacher, draws, a):
    """Beta-LS, transcribed from the reference code (ZhiluZhang123/neurips_2020_distillation
    @ f913a07, loss.py l.7-33, soft_beta_loss; train_smoothing.py l.118) in float64 NumPy::

        maximum = (softmax(outputs_orig) * tensor_labels).max(dim=1); indices = maximum.sort()
        random_beta = sort(np.random.beta(beta, 1, n))           # here: the given draws, sorted
        beta_label = sorted_labels * random_beta + (1 - random_beta) / (K - 1) off the label
        beta_loss = sum(-beta_label * log(sorted_softmax + 1e-8)) / n
        loss = (1 - a) * CrossEntropyLoss(outputs, labels) + a * beta_loss

    per example (un-sorted), and its gradient: with ``w_k = y~_k q_k / (q_k + 1e-8)``,
    ``d/dz_j [-sum_k y~_k log(q_k + 1e-8)] = q_j sum_k w_k - w_j``. The ranking takes the
    teacher's confidence in float32, as the reference code (and the package) computes it, with
    ties in batch order (a stable sort; the code's ``torch.sort`` leaves their order open).
    """
    k = p.shape[-1]
    confidence = np.sum(np.exp(np_log_softmax(np.asarray(z_teacher, np.float32))).astype(np.float32)
                        * p, axis=-1)
    order = np.argsort(confidence, kind="stable")
    on_label = np.empty(len(p))
    on_label[order] = np.sort(np.asarray(draws, np.float64))
    smoothed = p * on_label[:, None] + (1.0 - p) * ((1.0 - on_label) / (k - 1))[:, None]
    log_q1 = np_log_softmax(z)
    q = np.exp(log_q1)
    value = (1.0 - a) * np_ce(p, log_q1) - a * np.sum(smoothed * np.log(q + 1e-8), axis=-1)
    w = smoothed * q / (q + 1e-8)
    grad = (1.0 - a) * (q - p) + a * (q * w.sum(axis=-1, keepdims=True) - w)
    return value, grad


# ==========================================================================
# The methods: the package call and its reference, side by side
# ==========================================================================


class Method:
    def __init__(self, n_teachers, call, ref):
        self.n_teachers = n_teachers  # 0: no teacher logits
        self.call = call  # (labels, logits, teacher_logits (n, B, K)) -> per-example
        self.ref = ref  # (one_hot, z, teacher_logits (n, B, K)) -> (value, grad)


def _mr(zt, t):
    return np.stack([np_log_softmax(x / t) for x in zt])


def _mr_tc(p, zt, t, g):
    return np.stack([log_memory_replay_correction(p, x, t, g) for x in zt])


BETA_DRAWS = np.random.default_rng(7).beta(3.0, 1.0, 6).astype(np.float32)  # one per example

METHODS = {
    "ce": Method(0, lambda y, z, zt: losses.ce(y, z), lambda p, z, zt: ref_ce(p, z)),
    "lsr": Method(
        0, lambda y, z, zt: losses.lsr(y, z, alpha=0.1), lambda p, z, zt: ref_lsr(p, z, 0.1)
    ),
    "lsrkd": Method(
        0,
        lambda y, z, zt: losses.lsrkd(y, z, alpha=0.1, temperature=3.0),
        lambda p, z, zt: ref_distill(p, z, log_uniform(p)[None], 0.1, 3.0, 1),
    ),
    "lsrkd_tc": Method(
        0,
        lambda y, z, zt: losses.lsrkd(y, z, alpha=0.1, temperature=3.0, gamma=0.25),
        lambda p, z, zt: ref_distill(p, z, log_teacher_correction(p, 0.25)[None], 0.1, 3.0, 1),
    ),
    # Hinton KD with one (batch, K) teacher: t^2 (W 4).
    "kd": Method(
        1,
        lambda y, z, zt: losses.kd(y, z, zt[0], alpha=0.9, temperature=4.0),
        lambda p, z, zt: ref_distill(p, z, _mr(zt, 4.0), 0.9, 4.0, 2),
    ),
    # KD with a corrected (batch, K) teacher: factor t (W 16, 17).
    "kd_tc": Method(
        1,
        lambda y, z, zt: losses.kd(y, z, zt[0], alpha=0.5, temperature=2.0, gamma=0.5),
        lambda p, z, zt: ref_distill(p, z, _mr_tc(p, zt, 2.0, 0.5), 0.5, 2.0, 1),
    ),
    "mrkd_n1": Method(
        1,
        lambda y, z, zt: losses.mrkd(y, z, zt, alpha=0.25, temperature=3.0),
        lambda p, z, zt: ref_distill(p, z, _mr(zt, 3.0), 0.25, 3.0, 2),
    ),
    "mrkd_n3": Method(
        3,
        lambda y, z, zt: losses.mrkd(y, z, zt, alpha=0.25, temperature=3.0),
        lambda p, z, zt: ref_distill(p, z, _mr(zt, 3.0), 0.25, 3.0, 2),
    ),
    "mrkd_tc_n1": Method(
        1,
        lambda y, z, zt: losses.mrkd(y, z, zt, alpha=0.25, temperature=3.0, gamma=0.25),
        lambda p, z, zt: ref_distill(p, z, _mr_tc(p, zt, 3.0, 0.25), 0.25, 3.0, 1),
    ),
    "mrkd_tc_n3": Method(
        3,
        lambda y, z, zt: losses.mrkd(y, z, zt, alpha=0.25, temperature=3.0, gamma=0.25),
        lambda p, z, zt: ref_distill(p, z, _mr_tc(p, zt, 3.0, 0.25), 0.25, 3.0, 1),
    ),
    # Only the first m of n = 3 copies teach (those refreshed so far); m = 0 is plain CE.
    # The copies that do not teach hold other logits, which must not matter.
    "mrkd_n3_m0": Method(
        3,
        lambda y, z, zt: losses.mrkd(y, z, zt, alpha=0.25, temperature=3.0, teaching=0),
        lambda p, z, zt: ref_ce(p, z),
    ),
    "mrkd_n3_m2": Method(
        3,
        lambda y, z, zt: losses.mrkd(y, z, zt, alpha=0.25, temperature=3.0, teaching=2),
        lambda p, z, zt: ref_distill(p, z, _mr(zt[:2], 3.0), 0.25, 3.0, 2),
    ),
    "mrkd_tc_n3_m0": Method(
        3,
        lambda y, z, zt: losses.mrkd(
            y, z, zt, alpha=0.25, temperature=3.0, gamma=0.25, teaching=ops.convert_to_tensor(0)
        ),
        lambda p, z, zt: ref_ce(p, z),
    ),
    "mrkd_tc_n3_m1": Method(
        3,
        lambda y, z, zt: losses.mrkd(
            y, z, zt, alpha=0.25, temperature=3.0, gamma=0.25, teaching=ops.convert_to_tensor(1)
        ),
        lambda p, z, zt: ref_distill(p, z, _mr_tc(p, zt[:1], 3.0, 0.25), 0.25, 3.0, 1),
    ),
    "kd_m0": Method(
        1,
        lambda y, z, zt: losses.kd(y, z, zt[0], alpha=0.9, temperature=4.0, teaching=0),
        lambda p, z, zt: ref_ce(p, z),
    ),
    "pseudo_kd": Method(
        0,
        lambda y, z, zt: losses.pseudo_kd(y, z, alpha=0.2, beta=1.5),
        lambda p, z, zt: ref_pseudo_kd(p, z, 0.2, 1.5),
    ),
    # The reference code's settings for ResNet-18 and MobileNetV2 on CIFAR-100, and Eq. 9.
    "tf_reg_resnet18": Method(
        0,
        lambda y, z, zt: losses.tf_reg(y, z, alpha=0.1, temperature=20.0, multiplier=100.0),
        lambda p, z, zt: ref_tf_reg(p, z, 0.1, 20.0, 100.0),
    ),
    "tf_reg_mobilenetv2": Method(
        0,
        lambda y, z, zt: losses.tf_reg(y, z, alpha=0.95, temperature=40.0, multiplier=1.0),
        lambda p, z, zt: ref_tf_reg(p, z, 0.95, 40.0, 1.0),
    ),
    "tf_reg_paper": Method(
        0,
        lambda y, z, zt: losses.tf_reg(y, z, alpha=0.3, temperature=4.0, correct_probability=0.9,
                                       form="paper"),
        lambda p, z, zt: ref_tf_reg(p, z, 0.3, 4.0, correct=0.9, form="paper"),
    ),
    # CS-KD: the same-class partner's logits play the one teacher (the reference's defaults,
    # and its fine-grained lambda = 3 at another temperature).
    "cs_kd": Method(
        1,
        lambda y, z, zt: losses.cs_kd(y, z, zt[0], temperature=4.0, lam=1.0),
        lambda p, z, zt: ref_cs_kd(p, z, zt[0], 4.0, 1.0),
    ),
    "cs_kd_lam3_t2": Method(
        1,
        lambda y, z, zt: losses.cs_kd(y, z, zt[0], temperature=2.0, lam=3.0),
        lambda p, z, zt: ref_cs_kd(p, z, zt[0], 2.0, 3.0),
    ),
    # Beta-LS: the weight average's logits play the one teacher; the code's alpha 0.6.
    "beta_ls": Method(
        1,
        lambda y, z, zt: losses.beta_ls(y, z, zt[0], BETA_DRAWS, alpha=0.6),
        lambda p, z, zt: ref_beta_ls(p, z, zt[0], BETA_DRAWS, 0.6),
    ),
    "beta_ls_a1": Method(
        1,
        lambda y, z, zt: losses.beta_ls(y, z, zt[0], BETA_DRAWS, alpha=1.0),
        lambda p, z, zt: ref_beta_ls(p, z, zt[0], BETA_DRAWS, 1.0),
    ),
}

BATCH = 6
CASES = ("random", "saturated", "teacher_certain_true", "teacher_certain_wrong")


def make_case(case, k, n_teachers, seed=0):
    """Integer labels ``(B,)``, student logits ``(B, K)``, teacher logits ``(n, B, K)``."""
    rng = np.random.default_rng([seed, k, n_teachers, CASES.index(case)])
    n = max(n_teachers, 1)
    y = rng.integers(0, k, size=BATCH)
    rows = np.arange(BATCH)
    if case == "random":
        z = 3.0 * rng.standard_normal((BATCH, k))
        zt = 3.0 * rng.standard_normal((n, BATCH, k))
    elif case == "saturated":
        z = rng.uniform(-1e4, 1e4, (BATCH, k))
        zt = rng.uniform(-1e4, 1e4, (n, BATCH, k))
    elif case == "teacher_certain_true":
        # Teachers all but certain of the true class (qhat_c == 1 in float64):
        # W 16's normaliser 1 - qhat_c underflows.
        z = rng.uniform(-1e4, 1e4, (BATCH, k))
        zt = rng.uniform(-1e4, 0.0, (n, BATCH, k))
        zt[:, rows, y] = 1e4
    else:  # teacher_certain_wrong
        # Student and each teacher certain of a (different) wrong class.
        z = rng.uniform(-1e4, 0.0, (BATCH, k))
        z[rows, (y + 1) % k] = 1e4
        zt = rng.uniform(-1e4, 0.0, (n, BATCH, k))
        for i in range(n):
            zt[i, rows, (y + 2 + i) % k] = 1e4
    return y, z, zt


# ==========================================================================
# Backend access: per-example values and gradients with respect to logits
# ==========================================================================


def to_numpy(x):
    return ops.convert_to_numpy(ops.cast(x, "float32")).astype(np.float64)


def round_to(x, dtype):
    """``x`` rounded to ``dtype`` (as the backend rounds), returned in float64."""
    return to_numpy(ops.cast(ops.convert_to_tensor(np.asarray(x, np.float32)), dtype))


def value_and_grad(fn, logits, dtype="float32"):
    """``fn(z)`` per example and ``d sum(fn(z)) / dz``; rows are independent, so
    row ``i`` of the gradient is the gradient of example ``i``'s loss.

    Returns ``(value, grad, grad_dtype)`` as float64 arrays and the gradient's dtype.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        z = tf.constant(np.asarray(logits, np.float32), tf.float32)
        z = tf.cast(z, dtype)
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = fn(z)
            total = tf.reduce_sum(value)
        grad = tape.gradient(total, z)
    elif BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        z = jnp.asarray(np.asarray(logits, np.float32)).astype(dtype)
        value, vjp = jax.vjp(fn, z)
        (grad,) = vjp(jnp.ones_like(value))
    elif BACKEND == "torch":
        import torch

        z = torch.tensor(np.asarray(logits, np.float32)).to(getattr(torch, dtype))
        z.requires_grad_(True)
        value = fn(z)
        value.sum().backward()
        grad = z.grad
    else:
        pytest.skip(f"no gradient access written for the {BACKEND} backend")
    assert grad is not None, "no gradient reached the logits"
    return to_numpy(value), to_numpy(grad), keras.backend.standardize_dtype(grad.dtype)


def gradient_or_zero(fn, x):
    """``d sum(fn(x)) / dx`` as float64; zeros where no gradient reaches ``x``.

    TensorFlow answers ``None`` for an unconnected gradient, JAX zeros, and
    PyTorch leaves ``x.grad`` unset (or cannot call ``backward`` at all).
    """
    x = np.asarray(x, np.float32)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            total = tf.reduce_sum(fn(xt))
        grad = tape.gradient(total, xt)
    elif BACKEND == "jax":
        import jax

        grad = jax.grad(lambda v: ops.sum(fn(v)))(ops.convert_to_tensor(x))
    elif BACKEND == "torch":
        xt = ops.convert_to_tensor(x).requires_grad_(True)
        total = ops.sum(fn(xt))
        if total.requires_grad:
            total.backward()
        grad = xt.grad
    else:
        pytest.skip(f"no gradient access written for the {BACKEND} backend")
    return np.zeros(x.shape) if grad is None else to_numpy(grad)


def compiled(fn):
    """``fn`` traced and compiled: ``tf.function`` or ``jax.jit`` (arguments become symbolic)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    pytest.skip(
        f"the {BACKEND} backend runs eagerly: labels always have values and a bad one "
        "raises ValueError (test_clear_errors)"
    )


EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7
VALUE_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = {  # for logits of magnitude <= ~10; see grad_tol for larger ones
    "float32": dict(rtol=1e-5, atol=1e-6),
    "float16": dict(rtol=1e-5 + 2.0**-10, atol=1e-6),
    "bfloat16": dict(rtol=1e-5 + 2.0**-7, atol=1e-6),
}


def grad_tol(dtype, *logits):
    """``GRAD_TOL[dtype]`` plus float32's conditioning ``2 eps32 S``, S = max |logit|."""
    scale = max(float(np.max(np.abs(x))) for x in logits)
    tol = dict(GRAD_TOL[dtype])
    tol["rtol"] += 2 * EPS32 * scale
    return tol


# ==========================================================================
# The reference itself
# ==========================================================================


@pytest.mark.parametrize("name", sorted(METHODS))
def test_reference_gradients_match_finite_differences(name):
    """The analytic reference gradients equal central differences of the reference values."""
    method = METHODS[name]
    y, z, zt = make_case("random", 10, method.n_teachers, seed=1)
    p = np_one_hot(y, 10)
    if name == "pseudo_kd":  # P* is held fixed: differentiate with P* frozen at z.
        def value(zz):
            return ref_pseudo_kd(p, zz, 0.2, 1.5, frozen_z=z)[0]
    else:
        def value(zz):
            return method.ref(p, zz, zt)[0]
    _, grad = method.ref(p, z, zt)
    h = 1e-5
    numeric = np.zeros_like(z)
    for j in range(z.shape[1]):
        step = np.zeros_like(z)
        step[:, j] = h
        numeric[:, j] = (value(z + step) - value(z - step)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_reference_mrkd_tc_equals_w16_literally():
    """The log-space teacher correction is W 16 written literally, where that is computable."""
    y, _, zt = make_case("random", 10, 1, seed=2)
    p = np_one_hot(y, 10)
    t, g = 3.0, 0.3
    qhat = np_softmax(zt[0] / t)
    qc = np.sum(qhat * p, axis=-1, keepdims=True)
    literal = np.where(p == 1, g, (1 - g) * qhat / (1 - qc))
    np.testing.assert_allclose(
        np.exp(log_memory_replay_correction(p, zt[0], t, g)), literal, rtol=1e-12
    )


# ==========================================================================
# Every loss against the reference: value and gradient
# ==========================================================================


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_matches_reference(name, k, case, dtype):
    method = METHODS[name]
    y, z, zt = make_case(case, k, method.n_teachers)
    # The reference sees exactly the inputs the package sees: rounded to dtype.
    z, zt = round_to(z, dtype), round_to(zt, dtype)
    teacher = ops.cast(ops.convert_to_tensor(zt.astype(np.float32)), dtype)

    value, grad, grad_dtype = value_and_grad(lambda x: method.call(y, x, teacher), z, dtype)
    ref_value, ref_grad = method.ref(np_one_hot(y, k), z, zt)

    assert value.shape == (BATCH,)
    assert grad_dtype == dtype
    assert np.all(np.isfinite(ref_value)) and np.all(np.isfinite(ref_grad))
    assert np.all(np.isfinite(value)), value
    assert np.all(np.isfinite(grad)), grad
    np.testing.assert_allclose(value, ref_value, **VALUE_TOL)
    np.testing.assert_allclose(grad, ref_grad, **grad_tol(dtype, z, zt))


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.25, 1.0])
@pytest.mark.parametrize("case", ["random", "teacher_certain_true", "teacher_certain_wrong"])
def test_teacher_correction_extreme_gammas(gamma, case):
    """gamma = 0 or 1 leave zero-probability teacher entries (0 log 0 = 0), still finite."""
    k, a, t = 10, 0.3, 2.0
    y, z, zt = make_case(case, k, 3, seed=3)
    z, zt = round_to(z, "float32"), round_to(zt, "float32")
    p = np_one_hot(y, k)
    checks = [
        (lambda x: losses.lsrkd(y, x, a, t, gamma=gamma),
         ref_distill(p, z, log_teacher_correction(p, gamma)[None], a, t, 1)),
        (lambda x: losses.mrkd(y, x, zt.astype(np.float32), a, t, gamma=gamma),
         ref_distill(p, z, _mr_tc(p, zt, t, gamma), a, t, 1)),
    ]
    for fn, (ref_value, ref_grad) in checks:
        value, grad, _ = value_and_grad(fn, z)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
        np.testing.assert_allclose(value, ref_value, **VALUE_TOL)
        np.testing.assert_allclose(grad, ref_grad, **grad_tol("float32", z, zt))


def test_gamma_one_teacher_is_the_label():
    """With gamma = 1 the corrected teacher is p, so KL(p || q(t)) = CE(p, q(t))."""
    k, a, t = 10, 0.4, 3.0
    y, z, zt = make_case("random", k, 2, seed=4)
    p = np_one_hot(y, k)
    expected = (1 - a) * np_ce(p, np_log_softmax(z)) + a * t * np_ce(p, np_log_softmax(z / t))
    for value in (
        losses.lsrkd(y, z, a, t, gamma=1.0),
        losses.mrkd(y, z, zt, a, t, gamma=1.0),
    ):
        np.testing.assert_allclose(to_numpy(value), expected, **VALUE_TOL)


def test_no_gradient_into_teacher_logits():
    y, z, zt = make_case("random", 10, 3)
    z = z.astype(np.float32)
    for gamma in (None, 0.25):
        grad = gradient_or_zero(lambda t: losses.mrkd(y, z, t, 0.25, 3.0, gamma=gamma), zt)
        assert not np.any(grad)
    # the helper does see a gradient where there is one
    assert np.any(gradient_or_zero(lambda x: losses.mrkd(y, x, zt, 0.25, 3.0), z))
    # CS-KD: the partner's logits are a constant
    assert not np.any(gradient_or_zero(lambda t: losses.cs_kd(y, z, t, 4.0, 1.0), zt[0]))


# ==========================================================================
# Loss classes: batch mean of their functions
# ==========================================================================

CLASS_CASES = {
    "LSRLoss": (losses.LSRLoss(alpha=0.15), "lsr", dict(alpha=0.15)),
    "LsrKDLoss": (losses.LsrKDLoss(alpha=0.1, temperature=3.0), "lsrkd",
                  dict(alpha=0.1, temperature=3.0)),
    "LsrKDLoss_tc": (losses.LsrKDLoss(alpha=0.1, temperature=3.0, gamma=0.25), "lsrkd",
                     dict(alpha=0.1, temperature=3.0, gamma=0.25)),
    "KDLoss": (losses.KDLoss(alpha=0.9, temperature=4.0), "kd",
               dict(alpha=0.9, temperature=4.0)),
    "KDLoss_mrkd_tc": (losses.KDLoss(alpha=0.25, temperature=3.0, gamma=0.25), "kd",
                       dict(alpha=0.25, temperature=3.0, gamma=0.25)),
    "PseudoKDLoss": (losses.PseudoKDLoss(alpha=0.2, beta=2.5), "pseudo_kd",
                     dict(alpha=0.2, beta=2.5)),
    "TFRegLoss": (losses.TFRegLoss(alpha=0.1, temperature=20.0, multiplier=100.0), "tf_reg",
                  dict(alpha=0.1, temperature=20.0, multiplier=100.0)),
    "TFRegLoss_paper": (losses.TFRegLoss(alpha=0.2, temperature=5.0, form="paper"), "tf_reg",
                        dict(alpha=0.2, temperature=5.0, form="paper")),
    "CSKDLoss": (losses.CSKDLoss(temperature=3.0, lam=2.0), "cs_kd", dict(temperature=3.0, lam=2.0)),
}


@pytest.mark.parametrize("name", sorted(CLASS_CASES))
@pytest.mark.parametrize("case", ["random", "saturated"])
def test_loss_class_is_batch_mean_of_function(name, case):
    loss_obj, fn_name, kwargs = CLASS_CASES[name]
    fn = getattr(losses, fn_name)
    y, z, zt = make_case(case, 10, 3)
    if fn_name == "kd":
        per_example = fn(y, z, zt, **kwargs)
        value = loss_obj({"labels": y, "teacher_logits": zt}, z)
    elif fn_name == "cs_kd":  # one partner per anchor: (batch, K)
        per_example = fn(y, z, zt[0], **kwargs)
        value = loss_obj({"labels": y, "teacher_logits": zt[0]}, z)
    else:
        per_example = fn(y, z, **kwargs)
        value = loss_obj(y, z)
    assert ops.shape(value) == ()
    np.testing.assert_allclose(to_numpy(value), np.mean(to_numpy(per_example)), rtol=1e-6)
    # and the class is right, not merely consistent: against the reference
    p = np_one_hot(y, 10)
    ref = {
        "lsr": lambda: ref_lsr(p, z, kwargs["alpha"]),
        "lsrkd": lambda: ref_distill(
            p, z,
            (log_uniform(p) if "gamma" not in kwargs
             else log_teacher_correction(p, kwargs["gamma"]))[None],
            kwargs["alpha"], kwargs["temperature"], 1),
        "kd": lambda: ref_distill(
            p, z,
            _mr(zt, kwargs["temperature"]) if "gamma" not in kwargs
            else _mr_tc(p, zt, kwargs["temperature"], kwargs["gamma"]),
            kwargs["alpha"], kwargs["temperature"], 2 if "gamma" not in kwargs else 1),
        "pseudo_kd": lambda: ref_pseudo_kd(p, z, kwargs["alpha"], kwargs["beta"]),
        "tf_reg": lambda: ref_tf_reg(p, z, kwargs["alpha"], kwargs["temperature"],
                                     kwargs.get("multiplier", 1.0), form=kwargs.get("form", "code")),
        "cs_kd": lambda: ref_cs_kd(p, z, zt[0], kwargs["temperature"], kwargs["lam"]),
    }[fn_name]()[0]
    np.testing.assert_allclose(to_numpy(value), np.mean(ref), **VALUE_TOL)


def test_kd_loss_rejects_plain_labels():
    with pytest.raises(ValueError, match="teacher_logits"):
        losses.KDLoss()(np.array([0, 1]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="teaching"):
        losses.KDLoss()({"labels": np.array([0]), "teacher_logits": np.zeros((1, 3)), "n": 1},
                        np.zeros((1, 3)))


@pytest.mark.parametrize("gamma", [None, 0.25])
def test_kd_loss_class_passes_how_many_teach(gamma):
    y, z, zt = make_case("random", 10, 3, seed=4)
    for m in range(4):
        loss = losses.KDLoss(alpha=0.25, temperature=3.0, gamma=gamma)
        got = to_numpy(loss({"labels": y, "teacher_logits": zt, "teaching": m}, z))
        want = np.mean(to_numpy(losses.mrkd(y, z, zt, 0.25, 3.0, gamma, teaching=m)))
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # m = 3 of 3 is every teacher: the loss without `teaching`.
    np.testing.assert_allclose(
        to_numpy(losses.mrkd(y, z, zt, 0.25, 3.0, gamma, teaching=3)),
        to_numpy(losses.mrkd(y, z, zt, 0.25, 3.0, gamma)),
        rtol=1e-6,
    )


# ==========================================================================
# Identities from METHODS.md
# ==========================================================================


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("case", ["random", "saturated"])
def test_lsr_loss_equals_keras_label_smoothing(alpha, case):
    y, z, _ = make_case(case, 10, 0)
    one_hot = np_one_hot(y, 10).astype(np.float32)
    ours = losses.LSRLoss(alpha)(one_hot, z.astype(np.float32))
    keras_cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=alpha)
    theirs = keras_cce(one_hot, z.astype(np.float32))
    np.testing.assert_allclose(to_numpy(ours), to_numpy(theirs), rtol=1e-6, atol=1e-6)
    # per example as well (reduction None)
    keras_none = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=alpha, reduction=None
    )
    np.testing.assert_allclose(
        to_numpy(losses.lsr(y, z.astype(np.float32), alpha)),
        to_numpy(keras_none(one_hot, z.astype(np.float32))),
        rtol=1e-6, atol=1e-6,
    )


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("alpha", [0.1, 0.7])
def test_lsrkd_at_temperature_one_is_lsr_minus_a_log_k(k, alpha):
    """At t = 1:  (1-a) CE(p, q) + a KL(u || q)
                = (1-a) CE(p, q) + a [sum u log u - sum u log q]
                = (1-a) CE(p, q) + a CE(u, q) - a log K
                = CE((1-a) p + a u, q) - a log K = lsr - a log K.
    The gradients are equal."""
    y, z, _ = make_case("random", k, 0, seed=5)
    lsrkd_value, lsrkd_grad, _ = value_and_grad(lambda x: losses.lsrkd(y, x, alpha, 1.0), z)
    lsr_value, lsr_grad, _ = value_and_grad(lambda x: losses.lsr(y, x, alpha), z)
    np.testing.assert_allclose(lsrkd_value, lsr_value - alpha * math.log(k), **VALUE_TOL)
    np.testing.assert_allclose(lsrkd_grad, lsr_grad, **GRAD_TOL["float32"])
    assert not np.allclose(lsrkd_value, lsr_value, **VALUE_TOL)  # the constant is there


@pytest.mark.parametrize("case", ["random", "saturated"])
def test_pseudo_kd_target_and_no_gradient_through_p_star(case):
    a, b, k = 0.2, 1.5, 10
    y, z, _ = make_case(case, k, 0, seed=6)
    z = round_to(z, "float32")
    p = np_one_hot(y, k)
    # P* and phat as P 10, 13 and P 5 define them
    log_star = np_log_softmax(z * a / b)
    star = np.exp(log_star)
    np.testing.assert_allclose(
        np.exp(to_numpy(teachers.pseudo_kd_target(z, a, b))), star, rtol=1e-5, atol=1e-7
    )
    phat = (1 - a) * p + a * star
    np.testing.assert_allclose(phat.sum(-1), 1.0, rtol=1e-12)

    value, grad, _ = value_and_grad(lambda x: losses.pseudo_kd(y, x, a, b), z)
    # gradient of CE with the fixed target phat, through the package's own cross_entropy
    phat32 = phat.astype(np.float32)
    _, ce_grad, _ = value_and_grad(lambda x: losses.cross_entropy(phat32, x), z)
    np.testing.assert_allclose(grad, ce_grad, **GRAD_TOL["float32"])  # same float32 ops
    np.testing.assert_allclose(grad, np.exp(np_log_softmax(z)) - phat, **grad_tol("float32", z))
    # the b KL(P* || U) term is in the value
    expected = np_ce(phat, np_log_softmax(z)) + b * np_kl(log_star, log_uniform(p))
    np.testing.assert_allclose(value, expected, **VALUE_TOL)

    if case == "random":
        # P* is the minimiser of the inner objective a CE(P, q) + b KL(P || U) (P,
        # Theorem 1), so by the envelope theorem letting the gradient flow through
        # P* would give the same total gradient: the stop_gradient only saves work.
        # Checked on the reference; it is also why the package's gradient is right.
        def full(zz):
            return ref_pseudo_kd(p, zz, a, b)[0]
        h = 1e-5
        through = np.stack(
            [(full(z + h * e) - full(z - h * e)) / (2 * h) for e in np.eye(k)], axis=-1
        )
        np.testing.assert_allclose(through, np.exp(np_log_softmax(z)) - phat, atol=1e-8)
        # while the CE part alone does depend on P*: the fixed-target gradient differs
        def ce_part(zz):
            star_zz = np_softmax(zz * a / b)
            return np_ce((1 - a) * p + a * star_zz, np_log_softmax(zz))
        ce_through = np.stack(
            [(ce_part(z + h * e) - ce_part(z - h * e)) / (2 * h) for e in np.eye(k)], axis=-1
        )
        assert not np.allclose(ce_through, grad, atol=1e-3)


def test_pseudo_kd_target_has_no_gradient():
    z = make_case("random", 10, 0)[1]
    weights = np.arange(10.0, dtype=np.float32)
    grad = gradient_or_zero(lambda x: teachers.pseudo_kd_target(x, 0.2, 1.5) * weights, z)
    assert not np.any(grad)


@pytest.mark.parametrize("fn", ["lsrkd", "kd", "pseudo_kd"])
def test_kl_is_summed_over_classes_not_averaged(fn):
    """A KL averaged over classes would be K = 100 times too small."""
    k, t = 100, 2.0
    y, z, zt = make_case("random", k, 1, seed=7)
    p = np_one_hot(y, k)
    if fn == "lsrkd":  # alpha = 1: only a t KL(u || q(t))
        value = losses.lsrkd(y, z, alpha=1.0, temperature=t)
        kl_sum = t * np_kl(log_uniform(p), np_log_softmax(z / t))
    elif fn == "kd":  # alpha = 1: only a t^2 KL(qT(t) || q(t))
        value = losses.kd(y, z, zt[0], alpha=1.0, temperature=t)
        kl_sum = t**2 * np_kl(np_log_softmax(zt[0] / t), np_log_softmax(z / t))
        # Keras's own KLDivergence (sum over classes, batch mean) agrees here
        keras_kl = keras.losses.KLDivergence()(
            np_softmax(zt[0] / t).astype(np.float32), np_softmax(z / t).astype(np.float32)
        )
        np.testing.assert_allclose(t**2 * to_numpy(keras_kl), np.mean(kl_sum), rtol=1e-4)
    else:  # the b KL(P* || U) part: pseudo_kd - CE(phat, q)
        a, b = 0.2, 1.5
        log_star = np_log_softmax(z * a / b)
        phat = (1 - a) * p + a * np.exp(log_star)
        value = to_numpy(losses.pseudo_kd(y, z, a, b)) - np_ce(phat, np_log_softmax(z))
        kl_sum = b * np_kl(log_star, log_uniform(p))
    value = to_numpy(value)
    np.testing.assert_allclose(value, kl_sum, rtol=1e-4, atol=1e-5)
    assert np.all(kl_sum > 1e-3)
    assert not np.allclose(value, kl_sum / k, rtol=1e-2)


@pytest.mark.parametrize("gamma", [None, 0.25])
def test_mrkd_identical_copies_equal_one(gamma):
    y, z, zt = make_case("random", 10, 1, seed=8)
    copies = np.repeat(zt, 4, axis=0)
    one_value, one_grad, _ = value_and_grad(lambda x: losses.mrkd(y, x, zt, 0.25, 3.0, gamma), z)
    n_value, n_grad, _ = value_and_grad(lambda x: losses.mrkd(y, x, copies, 0.25, 3.0, gamma), z)
    two_d_value = to_numpy(losses.kd(y, z, zt[0], 0.25, 3.0, gamma))
    np.testing.assert_allclose(n_value, one_value, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(two_d_value, one_value, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(n_grad, one_grad, rtol=1e-6, atol=1e-7)


def test_mrkd_averages_the_kl_terms_of_distinct_copies():
    """W 14: (1/n) sum_i KL(qhat_i || q): the n-copy loss is the mean of the one-copy losses
    (the CE part is shared, so the mean of the whole losses)."""
    y, z, zt = make_case("random", 10, 3, seed=9)
    whole = to_numpy(losses.mrkd(y, z, zt, 0.25, 3.0))
    singles = [to_numpy(losses.mrkd(y, z, zt[i : i + 1], 0.25, 3.0)) for i in range(3)]
    np.testing.assert_allclose(whole, np.mean(singles, axis=0), rtol=1e-6)


def test_kd_temperature_factor_t_squared_without_gamma_t_with():
    """alpha = 1 isolates a t^s KL: s = 2 by default (W 4, 13), s = 1 with gamma (W 17),
    s = 1 for LsrKD (W 10), and temperature_power overrides it."""
    k, t, g = 10, 4.0, 0.3
    y, z, zt = make_case("random", k, 1, seed=10)
    p = np_one_hot(y, k)
    log_qt = np_log_softmax(z / t)
    kl_raw = np_kl(np_log_softmax(zt[0] / t), log_qt)
    kl_tc = np_kl(log_memory_replay_correction(p, zt[0], t, g), log_qt)
    kl_u = np_kl(log_uniform(p), log_qt)
    cases = [
        (losses.kd(y, z, zt[0], 1.0, t), t**2 * kl_raw),
        (losses.mrkd(y, z, zt, 1.0, t), t**2 * kl_raw),
        (losses.kd(y, z, zt[0], 1.0, t, gamma=g), t * kl_tc),
        (losses.mrkd(y, z, zt, 1.0, t, gamma=g), t * kl_tc),
        (losses.kd(y, z, zt[0], 1.0, t, temperature_power=3.0), t**3 * kl_raw),
        (losses.kd(y, z, zt[0], 1.0, t, gamma=g, temperature_power=2.0), t**2 * kl_tc),
        (losses.lsrkd(y, z, 1.0, t), t * kl_u),
        (losses.lsrkd(y, z, 1.0, t, temperature_power=2.0), t**2 * kl_u),
        (losses.KDLoss(1.0, t)({"labels": y, "teacher_logits": zt[0]}, z), np.mean(t**2 * kl_raw)),
        (losses.KDLoss(1.0, t, g)({"labels": y, "teacher_logits": zt}, z), np.mean(t * kl_tc)),
    ]
    for value, expected in cases:
        np.testing.assert_allclose(to_numpy(value), expected, rtol=1e-5)


def test_alpha_zero_is_cross_entropy_and_ce_matches_keras():
    y, z, zt = make_case("random", 10, 2, seed=11)
    ce = to_numpy(losses.ce(y, z))
    keras_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    np.testing.assert_allclose(ce, to_numpy(keras_ce(y, z.astype(np.float32))), rtol=1e-5)
    for value in (
        losses.lsr(y, z, 0.0),
        losses.lsrkd(y, z, 0.0, 3.0),
        losses.lsrkd(y, z, 0.0, 3.0, gamma=0.2),
        losses.kd(y, z, zt, 0.0, 3.0),
        losses.kd(y, z, zt, 0.0, 3.0, gamma=0.2),
    ):
        np.testing.assert_allclose(to_numpy(value), ce, rtol=1e-6)


# ==========================================================================
# Label formats
# ==========================================================================


@pytest.mark.parametrize("name", sorted(METHODS))
def test_label_formats_agree(name):
    method = METHODS[name]
    k = 10
    y, z, zt = make_case("random", k, method.n_teachers, seed=12)
    z = z.astype(np.float32)
    zt = zt.astype(np.float32)
    formats = {
        "int (B,)": y.astype(np.int32),
        "int64 (B,)": y.astype(np.int64),
        "int (B,1)": y.astype(np.int32)[:, None],
        "one-hot (B,K)": np.eye(k, dtype=np.float32)[y],
        "float (B,)": y.astype(np.float32),  # what Keras's Loss.__call__ hands over
        "float (B,1)": y.astype(np.float32)[:, None],
    }
    expected = method.ref(np_one_hot(y, k), z, zt)[0]
    for label_name, labels in formats.items():
        value = to_numpy(method.call(labels, z, zt))
        np.testing.assert_allclose(value, expected, **VALUE_TOL, err_msg=label_name)


@pytest.mark.parametrize("name", sorted(CLASS_CASES))
def test_loss_classes_accept_every_label_format(name):
    loss_obj, _, _ = CLASS_CASES[name]
    k = 10
    y, z, zt = make_case("random", k, 3, seed=13)
    results = []
    for labels in (y, y[:, None], np.eye(k, dtype=np.float32)[y], y.astype(np.float32)):
        y_true = {"labels": labels, "teacher_logits": zt} if name.startswith("KDLoss") else labels
        if name == "CSKDLoss":
            y_true = {"labels": labels, "teacher_logits": zt[0]}
        results.append(float(to_numpy(loss_obj(y_true, z))))
    np.testing.assert_allclose(results, results[0], rtol=1e-6)


# ==========================================================================
# Serialisation
# ==========================================================================


def _config_round_trip(loss_obj):
    config = loss_obj.get_config()
    clone = type(loss_obj).from_config(config)
    assert clone.get_config() == config
    revived = keras.losses.deserialize(keras.losses.serialize(loss_obj))
    assert type(revived) is type(loss_obj)
    assert revived.get_config() == config
    return clone


@pytest.mark.parametrize(
    "loss_obj",
    [
        losses.LSRLoss(alpha=0.3, name="my_lsr"),
        losses.LsrKDLoss(alpha=0.2, temperature=2.5),
        losses.LsrKDLoss(alpha=0.2, temperature=2.5, gamma=0.4, temperature_power=2.0),
        losses.KDLoss(alpha=0.5, temperature=3.0),
        losses.KDLoss(alpha=0.5, temperature=3.0, gamma=0.25, temperature_power=1.5),
        losses.PseudoKDLoss(alpha=0.3, beta=2.5),
        losses.TFRegLoss(alpha=0.95, temperature=40.0, multiplier=2.0, correct_probability=0.9,
                         form="paper"),
        losses.CSKDLoss(temperature=2.5, lam=3.0),
    ],
    ids=lambda o: type(o).__name__,
)
def test_get_config_from_config_round_trip(loss_obj):
    clone = _config_round_trip(loss_obj)
    y, z, zt = make_case("random", 10, 2, seed=14)
    y_true = {"labels": y, "teacher_logits": zt} if isinstance(loss_obj, losses.KDLoss) else y
    if isinstance(loss_obj, losses.CSKDLoss):
        y_true = {"labels": y, "teacher_logits": zt[0]}
    np.testing.assert_allclose(to_numpy(clone(y_true, z)), to_numpy(loss_obj(y_true, z)))


@pytest.mark.parametrize(
    "loss_obj",
    [
        losses.LSRLoss(alpha=0.3),
        losses.LsrKDLoss(alpha=0.2, temperature=2.5),
        losses.LsrKDLoss(alpha=0.2, temperature=2.5, gamma=0.4),
        losses.PseudoKDLoss(alpha=0.3, beta=2.5),
        losses.TFRegLoss(alpha=0.1, temperature=20.0, multiplier=100.0),
    ],
    ids=lambda o: f"{type(o).__name__}{'_tc' if getattr(o, 'gamma', None) else ''}",
)
def test_compiled_model_saves_and_loads_without_custom_objects(loss_obj, tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    model.compile(optimizer="sgd", loss=loss_obj)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is type(loss_obj)
    assert loaded.loss.get_config() == loss_obj.get_config()
    y, z, _ = make_case("random", 5, 0, seed=15)
    np.testing.assert_allclose(to_numpy(loaded.loss(y, z)), to_numpy(loss_obj(y, z)))


# ==========================================================================
# tf.distribute: per-replica loss scaling
# ==========================================================================

_OWN_STRATEGY = []


@pytest.fixture
def two_cpu_strategy(request):
    """``MirroredStrategy(["/cpu:0", "/cpu:1"])`` over conftest's two logical CPUs.

    Uses conftest's shared ``mirrored_strategy`` fixture where there is one:
    several MirroredStrategy instances in one process can abort each other's
    all-reduces.
    """
    if BACKEND != "tensorflow":
        pytest.skip("tf.distribute needs the tensorflow backend")
    import tensorflow as tf

    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the two logical CPU devices of conftest.py")
    try:
        return request.getfixturevalue("mirrored_strategy")
    except pytest.FixtureLookupError:
        if not _OWN_STRATEGY:
            _OWN_STRATEGY.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
        return _OWN_STRATEGY[0]



@pytest.mark.parametrize(
    "make_loss, ref",
    [
        (lambda: losses.LsrKDLoss(alpha=0.5, temperature=2.0),
         lambda p, z: ref_distill(p, z, log_uniform(p)[None], 0.5, 2.0, 1)),
        (lambda: losses.PseudoKDLoss(alpha=0.3, beta=1.5),
         lambda p, z: ref_pseudo_kd(p, z, 0.3, 1.5)),
    ],
    ids=["LsrKDLoss", "PseudoKDLoss"],
)
def test_mirrored_strategy_step_equals_single_device_step(make_loss, ref, two_cpu_strategy):
    import tensorflow as tf

    rng = np.random.default_rng(16)
    batch, dim, k, lr = 8, 4, 5, 0.5
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    y = rng.integers(0, k, batch).astype(np.int32)
    w0 = rng.standard_normal((dim, k)).astype(np.float32)
    b0 = rng.standard_normal(k).astype(np.float32)

    def one_step(strategy):
        with strategy.scope():
            model = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(k)])
            model.set_weights([w0, b0])
            model.compile(
                optimizer=keras.optimizers.SGD(lr), loss=make_loss(), jit_compile=False
            )
        history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return model.get_weights(), history.history["loss"][0]

    mirrored = two_cpu_strategy
    assert mirrored.num_replicas_in_sync == 2
    (w_m, b_m), loss_m = one_step(mirrored)
    (w_1, b_1), loss_1 = one_step(tf.distribute.get_strategy())

    # the float64 SGD step: z = x W + b, dL/dz = G / B (batch mean)
    x64 = x.astype(np.float64)
    z = x64 @ w0 + b0
    value, grad = ref(np_one_hot(y, k), z)
    w_ref = w0 - lr * x64.T @ grad / batch
    b_ref = b0 - lr * grad.mean(axis=0)
    assert not np.allclose(w_ref, w0, atol=1e-2)  # the step moves the weights

    for w, b in ((w_m, b_m), (w_1, b_1)):
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b, b_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w_m, w_1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b_m, b_1, rtol=1e-5, atol=1e-6)
    # and the reported loss is the batch mean, not 1/replicas of it
    np.testing.assert_allclose([loss_m, loss_1], np.mean(value), rtol=1e-5)


# ==========================================================================
# Errors
# ==========================================================================

_Y = np.array([0, 1, 2])
_Z = np.zeros((3, 4), np.float32)
_ZT = np.zeros((2, 3, 4), np.float32)

ALPHA = r"`alpha` must be in \[0, 1\]"
TEMP = r"`temperature` must be > 0"
GAMMA = r"`gamma` must be in \[0, 1\]"
BETA = r"`beta` must be > 0"

BAD_ARGUMENTS = [
    # (call, message)
    (lambda: losses.cs_kd(_Y, _Z, _Z, temperature=0.0), TEMP),
    (lambda: losses.cs_kd(_Y, _Z, _Z, lam=-0.5), r"`lam` must be in \[0, inf\]"),
    (lambda: losses.cs_kd(_Y, _Z, _ZT, lam=1.0), "`partner_logits` must have the logits' shape"),
    (lambda: losses.CSKDLoss()(_Y, _Z), "CSKDLoss expects y_true"),
    (lambda: losses.lsr(_Y, _Z, alpha=-0.1), ALPHA),
    (lambda: losses.lsr(_Y, _Z, alpha=1.5), ALPHA),
    (lambda: losses.lsr(_Y, _Z, alpha=float("nan")), ALPHA),
    (lambda: losses.lsrkd(_Y, _Z, alpha=1.01, temperature=3.0), ALPHA),
    (lambda: losses.lsrkd(_Y, _Z, alpha=0.1, temperature=0.0), TEMP),
    (lambda: losses.lsrkd(_Y, _Z, alpha=0.1, temperature=-2.0), TEMP),
    (lambda: losses.lsrkd(_Y, _Z, alpha=0.1, temperature=3.0, gamma=1.2), GAMMA),
    (lambda: losses.lsrkd(_Y, _Z, alpha=0.1, temperature=3.0, gamma=-0.2), GAMMA),
    (lambda: losses.kd(_Y, _Z, _ZT, alpha=-1.0, temperature=3.0), ALPHA),
    (lambda: losses.kd(_Y, _Z, _ZT, alpha=0.5, temperature=0.0), TEMP),
    (lambda: losses.kd(_Y, _Z, _ZT, alpha=0.5, temperature=3.0, gamma=2.0), GAMMA),
    (lambda: losses.mrkd(_Y, _Z, _ZT, alpha=0.5, temperature=-1.0), TEMP),
    (lambda: losses.mrkd(_Y, _Z, _ZT, alpha=0.5, temperature=3.0, gamma=-0.5), GAMMA),
    (lambda: losses.pseudo_kd(_Y, _Z, alpha=1.5, beta=1.0), ALPHA),
    (lambda: losses.pseudo_kd(_Y, _Z, alpha=0.2, beta=0.0), BETA),
    (lambda: losses.pseudo_kd(_Y, _Z, alpha=0.2, beta=-1.5), BETA),
    (lambda: losses.LSRLoss(alpha=-0.1), ALPHA),
    (lambda: losses.LsrKDLoss(alpha=2.0), ALPHA),
    (lambda: losses.LsrKDLoss(temperature=0.0), TEMP),
    (lambda: losses.LsrKDLoss(gamma=1.5), GAMMA),
    (lambda: losses.KDLoss(alpha=-0.5), ALPHA),
    (lambda: losses.KDLoss(temperature=-4.0), TEMP),
    (lambda: losses.KDLoss(gamma=-0.1), GAMMA),
    (lambda: losses.PseudoKDLoss(alpha=1.2), ALPHA),
    (lambda: losses.PseudoKDLoss(beta=0.0), BETA),
    # labels outside [0, K) in an eager call
    (lambda: losses.ce(np.array([0, 4, 1]), _Z), r"Labels must be in \[0, 4\)"),
    (lambda: losses.lsr(np.array([0, -1, 1]), _Z, 0.1), r"Labels must be in \[0, 4\)"),
    (lambda: losses.lsrkd(np.array([[0], [7], [1]]), _Z, 0.1, 3.0), r"Labels must be in \[0, 4\)"),
    (lambda: losses.kd(np.array([0, 9, 1]), _Z, _ZT, 0.5, 3.0), r"Labels must be in \[0, 4\)"),
    (lambda: losses.pseudo_kd(np.array([0, 4, 1]), _Z, 0.2, 1.5), r"Labels must be in \[0, 4\)"),
    (lambda: losses.LSRLoss()(np.array([0.0, 4.0, 1.0]), _Z), r"Labels must be in \[0, 4\)"),
    # label / logit shape mismatches
    (lambda: losses.ce(np.array([0, 1]), _Z), "batch size"),
    (lambda: losses.lsr(np.eye(4)[[0, 1]], _Z, 0.1), "batch size"),
    (lambda: losses.lsrkd(np.eye(5)[[0, 1, 2]], _Z, 0.1, 3.0), r"K=4 columns"),
    (lambda: losses.pseudo_kd(np.eye(3), _Z, 0.2, 1.5), r"K=4 columns"),
    (lambda: losses.ce(np.zeros((3, 2, 1), np.int32), _Z), "Labels must be integers"),
    # teacher logits of the wrong shape
    (lambda: losses.kd(_Y, _Z, np.zeros((3, 5)), 0.5, 3.0), "`teacher_logits` must have shape"),
    (lambda: losses.kd(_Y, _Z, np.zeros((2, 4)), 0.5, 3.0), "`teacher_logits` must have shape"),
    (lambda: losses.mrkd(_Y, _Z, np.zeros((2, 2, 4)), 0.5, 3.0), "`teacher_logits` must have shape"),
    (lambda: losses.mrkd(_Y, _Z, np.zeros((1, 2, 3, 4)), 0.5, 3.0),
     "`teacher_logits` must have shape"),
    (lambda: losses.mrkd(_Y, _Z, np.zeros(4), 0.5, 3.0, gamma=0.2),
     "`teacher_logits` must have shape"),
]


@pytest.mark.parametrize("index", range(len(BAD_ARGUMENTS)))
def test_clear_errors(index):
    call, message = BAD_ARGUMENTS[index]
    with pytest.raises(ValueError, match=message):
        call()


def test_error_message_names_the_value():
    with pytest.raises(ValueError, match=r"alpha=1\.5"):
        losses.LsrKDLoss(alpha=1.5)
    with pytest.raises(ValueError, match=r"got values from 0 to 4"):
        losses.ce(np.array([0, 4, 1]), _Z)


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("bad", [-1, 10])
def test_out_of_range_label_in_compiled_function_is_nan(name, bad):
    """Inside a tf.function or jax.jit the label cannot be checked without a host round
    trip: the example's loss is NaN (documented), never a silent 0; the others are right."""
    method = METHODS[name]
    y, z, zt = make_case("random", 10, method.n_teachers, seed=17)
    y_bad = y.copy()
    y_bad[2] = bad
    call = compiled(lambda labels, logits: method.call(labels, logits, zt))
    value = to_numpy(call(ops.convert_to_tensor(y_bad, "int32"), ops.convert_to_tensor(z, "float32")))
    assert np.isnan(value[2])
    good = np.arange(BATCH) != 2
    one_hot = np_one_hot(y, 10)
    if name.startswith("beta_ls"):  # the batch is ranked together: the bad example counts as
        one_hot[2] = 0.0  # a teacher confidence of 0 (its one-hot row is all zeros)
    np.testing.assert_allclose(value[good], method.ref(one_hot, z, zt)[0][good], **VALUE_TOL)


def test_out_of_range_label_through_a_loss_class_in_compiled_function_is_nan():
    loss = losses.LsrKDLoss()
    call = compiled(lambda labels, logits: loss(labels, logits))
    y, z, _ = make_case("random", 10, 0)
    y = y.astype(np.float32)
    y[0] = 10.0
    assert np.isnan(to_numpy(call(ops.convert_to_tensor(y), ops.convert_to_tensor(z, "float32"))))


# -- TF-reg: the reference code against its paper -----------------------------------------


def test_tf_reg_worked_example_of_methods_md():
    """The numbers docs/METHODS.md quotes (K = 10, label 0), from the transcription."""
    p = np_one_hot(np.array([0]), 10)
    z = np.array([[2.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, -0.5, -1.0, -1.0]])
    teacher = np.exp(to_numpy(teachers.hand_made(p, 0.99, 20.0)))
    np.testing.assert_allclose(teacher[0, :2], [0.104539, 0.099496], atol=1e-6)
    for kwargs, want in [(dict(alpha=0.1, temperature=20.0, multiplier=100.0), 1.18201),
                         (dict(alpha=0.95, temperature=40.0, multiplier=1.0), 0.08296)]:
        value = to_numpy(losses.tf_reg(np.array([0]), z, **kwargs))[0]
        reference, _ = ref_tf_reg(p, z, kwargs["alpha"], kwargs["temperature"], kwargs["multiplier"])
        np.testing.assert_allclose([value, reference[0]], want, atol=5e-5)


@pytest.mark.parametrize("k", [10, 100])
def test_tf_reg_code_form_is_label_smoothing_with_a_scaled_gradient(k):
    """The teacher is a constant: the code's loss is ``s * CE(target, q(1))`` + const with
    ``s = (1-a) + a m / K`` and ``target = ((1-a) p + (a m / K) teacher) / s``."""
    y, z, _ = make_case("random", k, 0, seed=21)
    p = np_one_hot(y, k)
    a, t, m = 0.95, 40.0, 1.0
    _, grad = ref_tf_reg(p, z, a, t, m)
    teacher = np.exp(np_log_softmax(np.where(p == 1, 0.99, 0.01 / (k - 1)) / t))
    scale = (1 - a) + a * m / k
    target = ((1 - a) * p + a * m / k * teacher) / scale
    np.testing.assert_allclose(grad, scale * (np_softmax(z) - target), atol=1e-12)
    _, package_grad, _ = value_and_grad(lambda x: losses.tf_reg(y, x, a, t, m), z)
    np.testing.assert_allclose(package_grad, grad, **GRAD_TOL["float32"])


def test_tf_reg_rejects_an_unknown_form():
    with pytest.raises(ValueError, match="form"):
        losses.tf_reg(np.array([0]), np.zeros((1, 3)), 0.1, 20.0, form="Eq. 9")
    with pytest.raises(ValueError, match="form"):
        losses.TFRegLoss(form="both")


# ==========================================================================
# from_logits=False: a model's probabilities in, the same loss out
# ==========================================================================
#
# Log-probabilities are logits of the same distribution, so the float64 reference of a loss
# on probabilities p is the reference on the logits log(clip(p, 1e-7, 1)); for p = softmax(z)
# (no entry below 1e-7) that is the reference on z itself.

PROB_EPSILON = 1e-7  # keras.config.epsilon(), the clip of Keras's crossentropy


def ref_kr_ls(p, z, rows, alpha):
    """KR-LS (Ding et al. 2021, Alg. 1 l.4-10): ``CE(p, q(1)) + alpha KL(p_res || q_res)`` over the
    classes other than the label, ``q_res`` from the constant rows; with ``a = p_res``,
    ``d KL / dz_j = a_j (log a_j - log q_res_j - KL)`` off the label."""
    label = p == 1
    log_a = np_log_softmax(np.where(label, -np.inf, z))
    log_b = np_log_softmax(np.where(label, -np.inf, np.asarray(rows, np.float64)))
    with np.errstate(invalid="ignore"):  # -inf - -inf on the label, replaced by 0
        kl = np.sum(np.where(label, 0.0, np.exp(log_a) * (log_a - log_b)), axis=-1)
        residual_grad = np.where(label, 0.0, np.exp(log_a) * (log_a - log_b - kl[:, None]))
    log_q = np_log_softmax(z)
    grad = np.exp(log_q) - p + alpha * residual_grad
    return np_ce(p, log_q) + alpha * kl, grad


# name: (make(**kwargs) -> Loss, y_true(labels, teacher logits (n, B, K)), reference(p, z, zt))
PROBABILITY_CASES = {
    "LSRLoss": (lambda **kw: losses.LSRLoss(alpha=0.1, **kw), lambda y, zt: y,
                lambda p, z, zt: ref_lsr(p, z, 0.1)),
    "LsrKDLoss": (lambda **kw: losses.LsrKDLoss(alpha=0.1, temperature=3.0, **kw),
                  lambda y, zt: y,
                  lambda p, z, zt: ref_distill(p, z, log_uniform(p)[None], 0.1, 3.0, 1)),
    "LsrKDLoss_tc": (lambda **kw: losses.LsrKDLoss(alpha=0.1, temperature=3.0, gamma=0.25, **kw),
                     lambda y, zt: y,
                     lambda p, z, zt: ref_distill(p, z, log_teacher_correction(p, 0.25)[None],
                                                  0.1, 3.0, 1)),
    "KDLoss": (lambda **kw: losses.KDLoss(alpha=0.9, temperature=4.0, **kw),
               lambda y, zt: {"labels": y, "teacher_logits": zt},
               lambda p, z, zt: ref_distill(p, z, _mr(zt, 4.0), 0.9, 4.0, 2)),
    "PseudoKDLoss": (lambda **kw: losses.PseudoKDLoss(alpha=0.2, beta=1.5, **kw), lambda y, zt: y,
                     lambda p, z, zt: ref_pseudo_kd(p, z, 0.2, 1.5)),
    "TFRegLoss": (lambda **kw: losses.TFRegLoss(alpha=0.1, temperature=20.0, multiplier=100.0, **kw),
                  lambda y, zt: y, lambda p, z, zt: ref_tf_reg(p, z, 0.1, 20.0, 100.0)),
    "CSKDLoss": (lambda **kw: losses.CSKDLoss(temperature=4.0, lam=1.0, **kw),
                 lambda y, zt: {"labels": y, "teacher_logits": zt[0]},
                 lambda p, z, zt: ref_cs_kd(p, z, zt[0], 4.0, 1.0)),
    "BetaLSLoss": (lambda **kw: losses.BetaLSLoss(alpha=0.6, **kw),
                   lambda y, zt: {"labels": y, "teacher_logits": zt[0], "draws": BETA_DRAWS},
                   lambda p, z, zt: ref_beta_ls(p, z, zt[0], BETA_DRAWS, 0.6)),
    "KRLSLoss": (lambda **kw: losses.KRLSLoss(alpha=1.0, **kw),
                 lambda y, zt: {"labels": y, "teacher_logits": zt[0]},
                 lambda p, z, zt: ref_kr_ls(p, z, zt[0], 1.0)),
}


def test_probability_cases_cover_every_loss_class():
    classes = {name for name in losses.__all__ if name.endswith("Loss")}
    assert classes == {name.split("_")[0] for name in PROBABILITY_CASES}


def plain_softmax(z):
    """``softmax(z)`` as ``exp(log_softmax(z))``: a tensor without the logits Keras keeps on
    its softmax's output, so the loss must work from the probabilities alone."""
    return ops.exp(ops.log_softmax(z, axis=-1))


@pytest.mark.parametrize("name", sorted(PROBABILITY_CASES))
def test_probabilities_give_the_loss_of_their_logits(name):
    """``Loss(from_logits=False)(y, softmax(z))`` equals ``Loss()(y, z)`` and the float64
    reference on ``z``, values per example and gradients with respect to ``z`` through the
    softmax."""
    make, y_true, ref = PROBABILITY_CASES[name]
    y, z, zt = make_case("random", 10, 3, seed=31)
    z = z / 2.0  # logits of standard deviation 1.5: no probability near the clip
    assert np.min(np_softmax(z)) > 1e3 * PROB_EPSILON
    on_probabilities = make(from_logits=False, reduction=None)
    on_logits = make(reduction=None)
    value, grad, _ = value_and_grad(lambda x: on_probabilities(y_true(y, zt), plain_softmax(x)), z)
    want_value, want_grad = ref(np_one_hot(y, 10), z, zt)
    np.testing.assert_allclose(value, want_value, **VALUE_TOL)
    np.testing.assert_allclose(grad, want_grad, **GRAD_TOL["float32"])
    logits_value, logits_grad, _ = value_and_grad(lambda x: on_logits(y_true(y, zt), x), z)
    np.testing.assert_allclose(value, logits_value, **VALUE_TOL)
    np.testing.assert_allclose(grad, logits_grad, **GRAD_TOL["float32"])


@pytest.mark.parametrize("name", sorted(PROBABILITY_CASES))
def test_exact_zero_and_one_probabilities_give_finite_values_and_gradients(name):
    """Probabilities of exactly 0 and 1 (certain of the label, certain of another class):
    the value is the reference on ``log(clip(p, 1e-7, 1))``; the gradients with respect to
    the probabilities, and to saturated logits through a softmax, are finite."""
    make, y_true, ref = PROBABILITY_CASES[name]
    y, z, zt = make_case("saturated", 10, 3, seed=32)
    p = np.where(np.arange(10) == ((y + np.arange(BATCH) % 2) % 10)[:, None], 1.0, 0.0)
    loss = make(from_logits=False, reduction=None)
    value = to_numpy(loss(y_true(y, zt), p.astype(np.float32)))
    want, _ = ref(np_one_hot(y, 10), np.log(np.clip(p, PROB_EPSILON, 1.0)), zt)
    np.testing.assert_allclose(value, want, **VALUE_TOL)
    assert np.isfinite(gradient_or_zero(lambda x: loss(y_true(y, zt), x), p)).all()
    saturated = to_numpy(plain_softmax(ops.convert_to_tensor(z, "float32")))
    assert np.sum(saturated == 0.0) > 0 and np.sum(saturated == 1.0) > 0
    value, grad, _ = value_and_grad(lambda x: loss(y_true(y, zt), plain_softmax(x)), z)
    assert np.isfinite(value).all() and np.isfinite(grad).all()


def _no_kept_logits():
    if BACKEND == "jax":
        pytest.skip("JAX arrays take no attributes: Keras keeps no logits on a softmax's output")


@pytest.mark.parametrize("name", ["LSRLoss", "KDLoss", "KRLSLoss"])
def test_a_keras_softmax_output_is_read_through_its_logits(name):
    """Where Keras keeps the logits on its softmax's output, ``from_logits=False`` uses them,
    as Keras's crossentropy does: saturated logits give the exact reference on ``z`` (the
    clipped probabilities would cap each log-probability at log 1e-7)."""
    _no_kept_logits()
    make, y_true, ref = PROBABILITY_CASES[name]
    y, z, zt = make_case("saturated", 10, 3, seed=33)
    loss = make(from_logits=False, reduction=None)
    value, grad, _ = value_and_grad(lambda x: loss(y_true(y, zt), keras.activations.softmax(x)), z)
    want_value, want_grad = ref(np_one_hot(y, 10), z, zt)
    np.testing.assert_allclose(value, want_value, **VALUE_TOL)
    np.testing.assert_allclose(grad, want_grad, **grad_tol("float32", z))


@pytest.mark.parametrize("name", sorted(PROBABILITY_CASES))
def test_from_logits_round_trips_through_the_config(name):
    make = PROBABILITY_CASES[name][0]
    assert make().from_logits is True and make().get_config()["from_logits"] is True
    clone = _config_round_trip(make(from_logits=False))
    assert clone.from_logits is False


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_from_logits_must_be_a_boolean(bad):
    with pytest.raises(ValueError, match=r"`from_logits` must be True or False; got from_logits="):
        losses.LSRLoss(from_logits=bad)


def test_from_logits_docstring_examples():
    import doctest

    from keras_softkd import _outputs

    runner = doctest.DocTestRunner()
    for test in (doctest.DocTestFinder().find(_outputs)
                 + doctest.DocTestFinder().find(losses._OutputLoss, "_OutputLoss",
                                                globs={})):
        runner.run(test)
    assert runner.tries >= 5 and runner.failures == 0


# -- The warning: a softmax's output given as logits ---------------------------------------

SOFTMAX_WARNING = r"LSRLoss received `from_logits=True`.*softmax.*LSRLoss\(\.\.\., from_logits=False\)"


def _tiny_data(seed=0):
    """Ten separable classes in 10 features: the class's feature is 2, the others noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(160) % 10
    x = 0.3 * rng.standard_normal((160, 10)).astype(np.float32)
    x[np.arange(160), y] += 2.0
    return x, y.astype(np.int32)


def _tiny_model(activation):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, activation=activation)])


def _fit_accuracy(model, loss, x, y):
    """Final training loss and accuracy after 15 SGD steps (3 epochs of 5 batches)."""
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    accuracy = np.mean(np.argmax(to_numpy(model(x)), axis=-1) == y)
    return history.history["loss"][-1], accuracy


def _softmax_warnings(record):
    return [w for w in record if "received `from_logits=True`" in str(w.message)]


def test_a_softmax_model_with_a_logits_loss_warns_on_fit_evaluate_and_eager_calls():
    """Its probabilities read as logits, the model stays near chance (loss near ln K): the
    failure the warning names, on fit, on evaluate and on an eager call, once per loss."""
    _no_kept_logits()
    x, y = _tiny_data()
    model = _tiny_model("softmax")
    with pytest.warns(UserWarning, match=SOFTMAX_WARNING):
        loss, accuracy = _fit_accuracy(model, losses.LSRLoss(), x, y)
    assert loss > 0.95 * math.log(10) and accuracy < 0.5, (loss, accuracy)
    model.compile(optimizer="sgd", loss=losses.LSRLoss())
    with pytest.warns(UserWarning, match=SOFTMAX_WARNING):
        model.evaluate(x, y, verbose=0)
    eager = losses.LSRLoss()
    with pytest.warns(UserWarning, match=SOFTMAX_WARNING) as record:
        eager(y, model(x))
        eager(y, model(x))
    assert len(_softmax_warnings(record)) == 1


def test_a_softmax_model_with_from_logits_false_learns_without_warning():
    """Read as probabilities, the same model and steps learn the ten classes."""
    if BACKEND == "jax":
        pytest.skip("model.fit compiles for 5 s on JAX; the values and gradients above cover JAX")
    x, y = _tiny_data()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loss, accuracy = _fit_accuracy(_tiny_model("softmax"), losses.LSRLoss(from_logits=False),
                                       x, y)
    assert not _softmax_warnings(record)
    assert accuracy > 0.9, (loss, accuracy)


def test_a_logits_model_does_not_warn():
    _no_kept_logits()
    x, y = _tiny_data()
    model = _tiny_model(None)
    model.compile(optimizer="sgd", loss=losses.LSRLoss())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.evaluate(x, y, batch_size=160, verbose=0)
        losses.LSRLoss()(y, model(x))
    assert not _softmax_warnings(record)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a traced TensorFlow graph's Softmax op")
def test_a_float16_softmax_in_a_traced_function_warns():
    """A mixed-precision model's float16 softmax reaches the loss through a cast to float32
    (Loss.__call__), which drops the kept logits: the graph's Softmax op is found through it."""
    import tensorflow as tf

    loss = losses.LSRLoss()
    y, z, _ = make_case("random", 10, 0, seed=34)
    call = tf.function(lambda x: loss(y, tf.nn.softmax(tf.cast(x, "float16"))))
    with pytest.warns(UserWarning, match=SOFTMAX_WARNING):
        call(tf.constant(z, tf.float32))
