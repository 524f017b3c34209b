"""The papers' losses: pure functions on logits and thin ``keras.losses.Loss`` classes.

Notation (``../docs/METHODS.md``): ``z`` student logits ``(batch, K)``, ``p``
one-hot labels, ``q(t) = softmax(z / t)``, ``CE(p, q) = -sum_k p_k log q_k``,
``KL(a || b) = sum_k a_k (log a_k - log b_k)`` with ``0 log 0 = 0``.

Every function returns the **per-example** loss, shape ``(batch,)``. KL terms
are summed over classes; the batch mean is the Keras ``Loss`` reduction (what
PyTorch calls ``batchmean``). Everything is computed from ``log_softmax`` of
logits, in float32 whatever the input dtype, so saturated logits and
float16/bfloat16 logits give finite losses and gradients.

=============  ===========================================================  =========
method         per-example loss                                             equation
=============  ===========================================================  =========
``ce``         ``CE(p, q(1))``
``lsr``        ``CE((1-a) p + a u, q(1))``                                  W 5, 6
``lsrkd``      ``(1-a) CE(p, q(1)) + a t KL(u || q(t))``                    W 10
``lsrkd_tc``   ``u`` replaced by ``q'`` (true class ``g``)                  W 11, 12
``kd``         ``(1-a) CE(p, q(1)) + a t^2 (1/n) sum_i KL(qT_i(t) || q(t))``  W 4, 14
``mrkd``       ``kd`` with the memory copies as the ``n`` teachers          W 13, 14
``mrkd_tc``    ``kd`` with each teacher corrected (W 16), factor ``t``      W 16, 17
``pseudo_kd``  ``CE((1-a) p + a P*, q(1)) + b KL(P* || U)``                 P 5, 12, 13
``tf_reg``     ``(1-a) CE(p, q(1)) + a (m/K) KL(softmax(p^d/t) || q(1))``   Yuan 2020 code
``cs_kd``      ``CE(p, q(1)) + lam t^2 KL(softmax(z'/t) || q(t))``, ``z'``     Yun 2020 code
               a same-class partner's logits
``kr_ls``      ``CE(p, q(1)) + a KL(p_res || softmax(S_y)_res)``, ``_res``:   Ding 2021
               over the K-1 classes other than the label, ``S`` learned    Alg. 1
=============  ===========================================================  =========

Labels may be integers, shape ``(batch,)`` or ``(batch, 1)``, or one-hot,
shape ``(batch, K)``.

The ``Loss`` classes take ``from_logits`` (default ``True``); with
``from_logits=False`` ``y_pred`` are probabilities (a model ending in a
softmax), turned into log-probabilities, which are logits of the same
distribution. A softmax's output given as logits warns.
"""

from __future__ import annotations

import math
from typing import Optional

import keras
from keras import ops

from keras_softkd import _checks, _outputs, teachers
from keras_softkd.choices import TF_REG_FORMS

__all__ = [
    "cross_entropy",
    "kl_divergence",
    "ce",
    "lsr",
    "lsrkd",
    "kd",
    "mrkd",
    "pseudo_kd",
    "tf_reg",
    "cs_kd",
    "beta_ls",
    "kr_ls",
    "kr_ls_update",
    "kr_ls_row_gradient",
    "residual_log_softmax",
    "LSRLoss",
    "LsrKDLoss",
    "KDLoss",
    "PseudoKDLoss",
    "TFRegLoss",
    "CSKDLoss",
    "BetaLSLoss",
    "KRLSLoss",
]

# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def cross_entropy(targets, logits) -> "Tensor":  # noqa: F821
    """``CE(targets, softmax(logits)) = -sum_k targets_k log_softmax(logits)_k``.

    Args:
        targets: ``(batch, K)`` probabilities (one-hot or smoothed).
        logits: ``(batch, K)`` logits.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> round(float(losses.cross_entropy(np.array([[0.0, 1.0]]), np.zeros((1, 2)))[0]), 4)
        0.6931
    """
    logits = ops.convert_to_tensor(logits)
    targets = _same_dtype(targets, logits)
    return -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)


def kl_divergence(teacher_log_probs, student_log_probs) -> "Tensor":  # noqa: F821
    """``KL(a || b) = sum_k a_k (log a_k - log b_k)``, summed over classes.

    Takes log-probabilities (never probabilities: no clipping, so a student
    probability of 1e-30 still gets its gradient). A teacher entry of
    ``-inf`` (probability 0) contributes 0 (``0 log 0 = 0``).

    Args:
        teacher_log_probs: ``log a``, shape ``(..., K)``.
        student_log_probs: ``log b``, same shape.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> a, b = np.log([[0.5, 0.5]]), np.log([[0.9, 0.1]])
        >>> round(float(losses.kl_divergence(a, b)[0]), 4)
        0.5108
    """
    teacher_log_probs = ops.convert_to_tensor(teacher_log_probs)
    student_log_probs = _same_dtype(student_log_probs, teacher_log_probs)
    has_mass = teacher_log_probs > -float("inf")
    safe_log = ops.where(has_mass, teacher_log_probs, 0.0)
    terms = ops.exp(safe_log) * (safe_log - student_log_probs)
    return ops.sum(ops.where(has_mass, terms, 0.0), axis=-1)


def _same_dtype(x, like):
    """``x`` as a tensor of ``like``'s dtype.

    NumPy arrays mixed with backend tensors are not promoted alike on every
    backend (PyTorch refuses ``ndarray * Tensor``; TensorFlow converts to the
    tensor's dtype), so convert explicitly, as TensorFlow does.
    """
    x = ops.convert_to_tensor(x)
    return x if x.dtype == like.dtype else ops.cast(x, like.dtype)


def _distillation(one_hot, logits, teacher_log_probs, alpha, temperature, power, teaching=None):
    """``(1-a) CE(p, q(1)) + a t^power KL(teacher || q(t))``, teacher in log space.

    ``teacher_log_probs`` may carry a leading axis of ``n`` teachers: their KL
    terms are averaged (W 14). ``teaching`` (a scalar ``m``, or ``None`` for
    all) keeps the first ``m`` teachers: their KL terms are averaged, the
    others ignored (``where``, so a teacher that is not used cannot make the
    loss NaN); with ``m = 0`` the loss is plain ``CE(p, q(1))``.
    """
    hard = cross_entropy(one_hot, logits)
    student = ops.log_softmax(logits / temperature, axis=-1)
    kl = kl_divergence(teacher_log_probs, student)
    if teaching is not None:
        teaching = ops.cast(teaching, "float32")
        if len(kl.shape) == 1:
            kl = kl[None]
        used = ops.arange(kl.shape[0], dtype="float32")[:, None] < teaching
        kl = ops.sum(ops.where(used, kl, 0.0), axis=0) / ops.maximum(teaching, 1.0)
        alpha = ops.where(teaching > 0, alpha, 0.0)
    elif len(kl.shape) == 2:  # (n, batch): n teachers
        kl = ops.mean(kl, axis=0)
    return (1.0 - alpha) * hard + alpha * temperature**power * kl


# --------------------------------------------------------------------------
# Per-example losses, one per method
# --------------------------------------------------------------------------


def ce(labels, logits) -> "Tensor":  # noqa: F821
    """Plain cross-entropy ``CE(p, q(1))`` from logits (the baseline).

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> round(float(losses.ce(np.array([1]), np.array([[0.0, 0.0]]))[0]), 4)
        0.6931
    """
    logits = _checks.as_float32(logits)
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    return _checks.mark_invalid(cross_entropy(one_hot, logits), valid)


def lsr(labels, logits, alpha: float) -> "Tensor":  # noqa: F821
    """Label smoothing regularization, ``CE(p', q(1))`` with ``p' = (1-a) p + a u`` (W 5, 6).

    Equals ``keras.losses.CategoricalCrossentropy(from_logits=True,
    label_smoothing=alpha)`` per example.

    Args:
        labels: integer ``(batch,)`` or one-hot ``(batch, K)`` labels.
        logits: ``(batch, K)`` student logits.
        alpha: smoothing weight ``a`` in ``[0, 1]``.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> round(float(losses.lsr(np.array([0]), np.array([[2.0, 0.0]]), alpha=0.1)[0]), 4)
        0.2269
    """
    _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
    logits = _checks.as_float32(logits)
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    num_classes = logits.shape[-1]
    smoothed = (1.0 - alpha) * one_hot + alpha / num_classes
    return _checks.mark_invalid(cross_entropy(smoothed, logits), valid)


def lsrkd(
    labels,
    logits,
    alpha: float,
    temperature: float,
    gamma: Optional[float] = None,
    temperature_power: float = 1.0,
) -> "Tensor":  # noqa: F821
    """LsrKD (W 10) and, with ``gamma``, LsrKD-TC (W 11, 12).

    ``(1-a) CE(p, q(1)) + a * t^power * KL(u || q(t))``; with ``gamma`` the
    uniform teacher ``u`` becomes ``q'`` with ``q'_c = gamma`` and
    ``q'_m = (1-gamma)/(K-1)``. The paper scales the KL term by ``t``
    (``temperature_power=1``), not Hinton's ``t^2``, on purpose (W 10).

    At ``t = 1`` LsrKD has the gradient of :func:`lsr` (the values differ by
    the constant ``a log K``).

    Args:
        labels: integer ``(batch,)`` or one-hot ``(batch, K)`` labels.
        logits: ``(batch, K)`` student logits.
        alpha: KD weight ``a`` in ``[0, 1]``.
        temperature: ``t > 0``.
        gamma: teacher correction, the true class's teacher probability in
            ``[0, 1]``; ``None`` for the uniform teacher.
        temperature_power: exponent of ``t`` on the KL term (paper: 1).

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> z = np.array([[3.0, 0.0, -1.0]])
        >>> round(float(losses.lsrkd(np.array([0]), z, alpha=0.1, temperature=3.0)[0]), 4)
        0.1099
    """
    _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
    _checks.positive("temperature", temperature)
    logits = _checks.as_float32(logits)
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    if gamma is None:
        teacher = teachers.uniform(one_hot)
    else:
        teacher = teachers.teacher_correction(one_hot, gamma)
    losses = _distillation(one_hot, logits, teacher, alpha, temperature, temperature_power)
    return _checks.mark_invalid(losses, valid)


def kd(
    labels,
    logits,
    teacher_logits,
    alpha: float,
    temperature: float,
    gamma: Optional[float] = None,
    temperature_power: Optional[float] = None,
    teaching=None,
) -> "Tensor":  # noqa: F821
    """Distillation from teacher logits: Hinton KD (W 4), MrKD (W 13, 14), MrKD-TC (W 16, 17).

    ``(1-a) CE(p, q(1)) + a * t^power * (1/n) sum_i KL(qT_i(t) || q(t))``
    with ``qT_i = softmax(teacher_logits[i] / t)``. With ``gamma`` each
    teacher is first corrected (W 16): ``qT'_c = gamma`` and the other classes
    share ``1 - gamma`` in proportion to ``qT``. The default power is the
    paper's: ``t^2`` for raw teachers (W 4, 13), ``t`` for corrected ones (W 17).
    No gradient flows into the teacher logits.

    Args:
        labels: integer ``(batch,)`` or one-hot ``(batch, K)`` labels.
        logits: ``(batch, K)`` student logits.
        teacher_logits: ``(batch, K)`` for one teacher, ``(n, batch, K)`` for
            ``n`` (the memory copies); their KL terms are averaged.
        alpha: KD weight ``a`` in ``[0, 1]``.
        temperature: ``t > 0``.
        gamma: teacher correction in ``[0, 1]``, or ``None``.
        temperature_power: exponent of ``t``; ``None`` for the paper's default.
        teaching: how many teachers teach, ``m`` (a scalar, may be a tensor):
            the first ``m`` of the ``n``; their KL terms are averaged, and with
            ``m = 0`` the loss is plain ``CE(p, q(1))``. ``None``: all of them.
            :class:`keras_softkd.MrKDModel` passes the number of memory copies
            refreshed so far.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> z, zt = np.array([[2.0, 0.0]]), np.array([[1.0, 0.0]])
        >>> round(float(losses.kd(np.array([0]), z, zt, alpha=0.5, temperature=2.0)[0]), 4)
        0.1194
    """
    _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
    _checks.positive("temperature", temperature)
    logits = _checks.as_float32(logits)
    teacher_logits = ops.stop_gradient(_checks.as_float32(teacher_logits))
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    if tuple(teacher_logits.shape[-2:]) != tuple(logits.shape) or len(teacher_logits.shape) > 3:
        raise ValueError(
            "`teacher_logits` must have shape (batch, K) or (n, batch, K) matching the "
            f"logits {tuple(logits.shape)}; got {tuple(teacher_logits.shape)}."
        )
    if gamma is None:
        teacher = ops.log_softmax(teacher_logits / temperature, axis=-1)
        power = 2.0 if temperature_power is None else temperature_power
    else:
        teacher = teachers.memory_replay_correction(one_hot, teacher_logits, temperature, gamma)
        power = 1.0 if temperature_power is None else temperature_power
    losses = _distillation(one_hot, logits, teacher, alpha, temperature, power, teaching)
    return _checks.mark_invalid(losses, valid)


def mrkd(
    labels,
    logits,
    copy_logits,
    alpha: float,
    temperature: float,
    gamma: Optional[float] = None,
    temperature_power: Optional[float] = None,
    teaching=None,
) -> "Tensor":  # noqa: F821
    """MrKD (W 13, 14) and, with ``gamma``, MrKD-TC (W 16, 17): :func:`kd` from memory copies.

    ``copy_logits`` has shape ``(n, batch, K)``: the logits of the ``n``
    memory copies ``theta_1 .. theta_n`` on the same batch. ``teaching``: how
    many of them (the first, most recent ``m``) teach; ``None`` for all. A copy
    teaches once it has been refreshed (docs/METHODS.md): with ``m = 0``, before
    the first refresh, the loss is plain cross-entropy.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> z, copies = np.array([[2.0, 0.0]]), np.array([[[1.0, 0.0]], [[0.0, 0.0]]])
        >>> round(float(losses.mrkd(np.array([0]), z, copies, alpha=0.1, temperature=3.0)[0]), 4)
        0.1447
    """
    return kd(labels, logits, copy_logits, alpha, temperature, gamma, temperature_power, teaching)


def pseudo_kd(labels, logits, alpha: float, beta: float) -> "Tensor":  # noqa: F821
    """Pseudo-KD, instance-specific label smoothing (P 12, 13).

    ``CE(phat, q(1)) + b * KL(P* || U)`` with ``P* = stop_gradient(softmax(z * a / b))``
    and ``phat = (1-a) p + a P*``. ``P*`` is fixed within the step (P,
    Algorithm 1), so the ``b KL(P* || U)`` term adds to the value but not to
    the gradient.

    Args:
        labels: integer ``(batch,)`` or one-hot ``(batch, K)`` labels.
        logits: ``(batch, K)`` student logits.
        alpha: smoothing weight ``a`` in ``[0, 1]``.
        beta: ``b > 0``; ``b / a`` acts as a temperature on the student.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> z = np.array([[2.0, 0.0, 0.0]])
        >>> round(float(losses.pseudo_kd(np.array([0]), z, alpha=0.2, beta=1.5)[0]), 4)
        0.494
    """
    _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
    _checks.positive("beta", beta)
    logits = _checks.as_float32(logits)
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    log_target = teachers.pseudo_kd_target(logits, alpha, beta)
    smoothed = (1.0 - alpha) * one_hot + alpha * ops.exp(log_target)
    log_uniform = teachers.uniform(one_hot)
    losses = cross_entropy(smoothed, logits) + beta * kl_divergence(log_target, log_uniform)
    return _checks.mark_invalid(losses, valid)


def tf_reg(
    labels,
    logits,
    alpha: float,
    temperature: float,
    multiplier: float = 1.0,
    correct_probability: float = 0.99,
    form: str = "code",
) -> "Tensor":  # noqa: F821
    """TF-reg, KD from a manually designed teacher (Yuan et al. 2020, Tf-KD_reg).

    ``form="code"`` (default) is what the reference code computes
    (yuanli2333/Teacher-free-Knowledge-Distillation, ``my_loss_function.py``,
    ``loss_kd_regularization``), and what P's Table 2 measured::

        (1-a) CE(p, q(1)) + a * (m / K) * KL(softmax(p^d / t) || q(1))

    ``p^d`` is :func:`keras_softkd.teachers.hand_made`'s teacher, the student
    is *not* softened, ``m`` is the code's per-network ``multiplier`` and the
    ``1/K`` is PyTorch's ``KLDivLoss()`` default reduction (the mean over the
    ``B x K`` elements). ``form="paper"`` is the paper's Eq. 9, the student at
    the teacher's temperature, no multiplier::

        (1-a) CE(p, q(1)) + a * KL(softmax(p^d / t) || q(t))

    Both are close to label smoothing: at ``t = 20`` the teacher is within
    0.005 of uniform (docs/METHODS.md, TF-reg, has a worked example).

    Args:
        labels: integer ``(batch,)`` or one-hot ``(batch, K)`` labels.
        logits: ``(batch, K)`` student logits.
        alpha: weight ``a`` in ``[0, 1]`` (the code's ``reg_alpha``).
        temperature: ``t > 0`` (``reg_temperature``).
        multiplier: ``m > 0`` (``multiplier``; ``form="code"`` only).
        correct_probability: ``p^d`` of the true class, in ``(0, 1]`` (0.99 in the code).
        form: ``"code"`` or ``"paper"``.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> z = np.array([[2.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, -0.5, -1.0, -1.0]])
        >>> value = losses.tf_reg(np.array([0]), z, alpha=0.1, temperature=20.0, multiplier=100.0)
        >>> round(float(value[0]), 4)
        1.182
    """
    _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
    _checks.positive("temperature", temperature)
    _checks.positive("multiplier", multiplier)
    _checked_form(form)
    logits = _checks.as_float32(logits)
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    teacher = teachers.hand_made(one_hot, correct_probability, temperature)
    if form == "code":
        weight = alpha * multiplier / logits.shape[-1]
        student = ops.log_softmax(logits, axis=-1)
    else:
        weight = alpha
        student = ops.log_softmax(logits / temperature, axis=-1)
    loss = (1.0 - alpha) * cross_entropy(one_hot, logits) + weight * kl_divergence(teacher, student)
    return _checks.mark_invalid(loss, valid)


def beta_ls(labels, logits, teacher_logits, draws, alpha: float = 0.6, ranks=None) -> "Tensor":  # noqa: F821
    """Beta-LS, instance-specific label smoothing from a weight-averaged teacher (Zhang & Sabuncu 2020).

    What the reference code computes (ZhiluZhang123/neurips_2020_distillation @
    f913a07, ``train_smoothing.py`` l.116-118, ``loss.py`` l.7-33)::

        c_i = softmax(teacher_i)[y_i]                 the teacher's confidence in the label
        b   = sort(draws)[rank of c_i in the batch]   draws ~ Beta(beta, 1), one per example
        y~_i = b on y_i, (1 - b) / (K - 1) elsewhere
        loss_i = (1-a) CE(p_i, q_i(1)) - a sum_k y~_ik log(q_ik(1) + 1e-8)

    the ``+ 1e-8`` inside the log as in the code (it caps a class's term at
    ``log 1e-8``; the cross-entropy term is the exact log-softmax). The
    teacher gets no gradient.

    Args:
        labels: integer ``(batch,)`` or one-hot ``(batch, K)`` labels.
        logits: ``(batch, K)`` student logits.
        teacher_logits: ``(batch, K)`` the teacher's logits.
        draws: ``(n,)`` draws from ``Beta(beta, 1)`` (``n`` = the batch, or the
            global batch over replicas with ``ranks``).
        alpha: weight ``a`` in ``[0, 1]`` of the smoothed term (code: 0.6).
        ranks: each example's rank among the ``n`` (default: by ``c`` in this batch).

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> z, t = np.array([[2.0, 0.0, 0.0]]), np.array([[1.0, 0.0, 0.0]])
        >>> round(float(losses.beta_ls(np.array([0]), z, t, np.array([0.8]), alpha=0.6)[0]), 4)
        0.4795
    """
    _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
    logits = _checks.as_float32(logits)
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    if ranks is None:
        teacher = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
        confidence = ops.sum(ops.softmax(teacher, axis=-1) * one_hot, axis=-1)
        ranks = teachers.confidence_ranks(confidence)
    smoothed = ops.stop_gradient(teachers.beta_smoothing(one_hot, ranks, draws))
    log_q = ops.log(ops.softmax(logits, axis=-1) + 1e-8)
    losses = (1.0 - alpha) * cross_entropy(one_hot, logits) - alpha * ops.sum(smoothed * log_q, axis=-1)
    return _checks.mark_invalid(losses, valid)


def _checked_form(form: str) -> str:
    if form not in TF_REG_FORMS:
        raise ValueError(f"`form` must be one of {list(TF_REG_FORMS)}; got form={form!r}.")
    return form


def cs_kd(labels, logits, partner_logits, temperature: float = 4.0, lam: float = 1.0
          ) -> "Tensor":  # noqa: F821
    """Class-wise self-knowledge distillation, CS-KD (Yun et al., CVPR 2020), per anchor.

    ``CE(p, q(1)) + lam * t^2 * KL(softmax(z' / t) || q(t))``: ``z`` the
    anchor's logits, ``z'`` the logits of a *different image of the same class*
    (its partner) from the same network, held constant (no gradient flows
    into ``partner_logits``). The KL is summed over classes; the batch mean
    (Keras's reduction) gives the reference's ``KLDivLoss(reduction="sum") / B``.
    Only the anchors' labels enter the cross-entropy.

    Source: alinlab/cs-kd @ b447f25, train.py l.95-107 (``KDLoss``) and
    l.130-140 (the loss of a step); docs/REFERENCE_CODE.md section 2.

    Args:
        labels: the anchors' integer ``(batch,)`` or one-hot ``(batch, K)`` labels.
        logits: ``(batch, K)`` anchor logits.
        partner_logits: ``(batch, K)`` logits of each anchor's partner.
        temperature: ``t > 0`` (reference default 4).
        lam: weight ``lambda >= 0`` of the KL term (reference: 1 on CIFAR, 3
            on the fine-grained sets); ``0`` is plain cross-entropy.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> z, partner = np.array([[2.0, 0.0]]), np.array([[1.0, 0.0]])
        >>> round(float(losses.cs_kd(np.array([0]), z, partner, temperature=4.0, lam=1.0)[0]), 4)
        0.2484
    """
    _checks.positive("temperature", temperature)
    _checks.in_closed_range("lam", lam, 0.0, math.inf)
    logits = _checks.as_float32(logits)
    partner_logits = ops.stop_gradient(_checks.as_float32(partner_logits))
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    if tuple(partner_logits.shape) != tuple(logits.shape):
        raise ValueError(
            f"`partner_logits` must have the logits' shape {tuple(logits.shape)} (one partner "
            f"per anchor); got {tuple(partner_logits.shape)}."
        )
    partner = ops.log_softmax(partner_logits / temperature, axis=-1)
    anchor = ops.log_softmax(logits / temperature, axis=-1)
    loss = cross_entropy(one_hot, logits) + lam * temperature**2 * kl_divergence(partner, anchor)
    return _checks.mark_invalid(loss, valid)


# Knowledge Refinery (KR-LS, Ding et al., AAAI 2021, Algorithm 1) ------------------------------

#: The logit given to the label's entry before a residual softmax: exp of it is exactly 0 in
#: float32, and it stays finite (no inf - inf, no NaN gradient) where -inf would not.
_LEFT_OUT = -1e30


def residual_log_softmax(values, one_hot) -> "Tensor":  # noqa: F821
    """Log-softmax over the ``K - 1`` entries that are not the label's (KR's ``(z)_{\\k}``).

    The label's entry gets a finite ``-1e30`` (probability exactly 0); the
    others are ``log_softmax`` of ``values`` with that entry left out. Takes
    logits (or rows of KR's matrix) of shape ``(batch, K)`` and the one-hot
    labels; float32.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> out = losses.residual_log_softmax(np.zeros((1, 3), "float32"), np.eye(3, dtype="float32")[[0]])
        >>> np.round(np.exp(np.asarray(out)), 4).tolist()
        [[0.0, 0.5, 0.5]]
    """
    values = _checks.as_float32(values)
    one_hot = _same_dtype(one_hot, values)
    return ops.log_softmax(ops.where(one_hot > 0, _LEFT_OUT, values), axis=-1)


def _residual_kl(one_hot, log_a, log_b):
    """``KL(a || b)`` over the non-label entries of two residual log-distributions."""
    terms = ops.exp(log_a) * (log_a - log_b)
    return ops.sum(ops.where(one_hot > 0, 0.0, terms), axis=-1)


def kr_ls(labels, logits, rows, alpha: float = 1.0) -> "Tensor":  # noqa: F821
    """Knowledge Refinery (KR-LS; Ding et al., AAAI 2021, Algorithm 1 l.4-10), per example.

    ``CE(y, softmax(z)) + alpha * KL(p_res || q_res)`` with
    ``p_res = softmax(z_{\\k})``, the student's distribution over the ``K - 1``
    classes other than the label ``k`` (Alg. 1 l.6-7), and
    ``q_res = softmax(S_k)`` over the same classes, ``S_k`` the label's row of
    the residual correlation matrix (l.8), held constant (no gradient flows
    into ``rows``). This is ``L_hard + alpha L_res`` (l.5, l.10, l.11); the
    matrix's own loss is :func:`kr_ls_update`.

    Args:
        labels: integer ``(batch,)`` or one-hot ``(batch, K)`` labels.
        logits: ``(batch, K)`` student logits.
        rows: ``(batch, K)``, each example's row ``S_k`` of the matrix (its
            label's entry is ignored).
        alpha: the weight ``alpha >= 0`` of the residual loss.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> z, rows = np.array([[2.0, 1.0, 0.0]]), np.zeros((1, 3))
        >>> round(float(losses.kr_ls(np.array([0]), z, rows, alpha=1.0)[0]), 4)
        0.5186
    """
    _checks.in_closed_range("alpha", alpha, 0.0, math.inf)
    logits = _checks.as_float32(logits)
    rows = ops.stop_gradient(_checks.as_float32(rows))
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    _check_rows(rows, logits)
    student = residual_log_softmax(logits, one_hot)
    row = residual_log_softmax(rows, one_hot)
    loss = cross_entropy(one_hot, logits) + alpha * _residual_kl(one_hot, student, row)
    return _checks.mark_invalid(loss, valid)


def kr_ls_update(labels, logits, rows) -> "Tensor":  # noqa: F821
    """KR's update loss ``L_upd = KL(q_res || p_res)`` per example (Algorithm 1 l.9).

    The loss the matrix descends (l.12); the student's logits are held
    constant. See :func:`kr_ls` for ``p_res`` and ``q_res``.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> z, rows = np.array([[2.0, 1.0, 0.0]]), np.zeros((1, 3))
        >>> round(float(losses.kr_ls_update(np.array([0]), z, rows)[0]), 4)
        0.1201
    """
    logits = ops.stop_gradient(_checks.as_float32(logits))
    rows = _checks.as_float32(rows)
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    _check_rows(rows, logits)
    row = residual_log_softmax(rows, one_hot)
    return _checks.mark_invalid(
        _residual_kl(one_hot, row, residual_log_softmax(logits, one_hot)), valid
    )


def kr_ls_row_gradient(labels, logits, rows) -> "Tensor":  # noqa: F821
    """``d L_upd / d S_k`` per example, in closed form: ``(batch, K)``, 0 at the label.

    With ``q = q_res`` and ``p = p_res`` (:func:`kr_ls`), for every class
    ``j != k``: ``q_j (log q_j - log p_j - KL(q || p))``. The step's matrix
    gradient is the batch mean of these, each added to its label's row
    (``keras_softkd.KRLSModel``). No gradient flows into ``logits``.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import losses
        >>> z, rows = np.array([[2.0, 1.0, 0.0]]), np.zeros((1, 3))
        >>> np.round(np.asarray(losses.kr_ls_row_gradient(np.array([0]), z, rows)), 4).tolist()
        [[0.0, -0.25, 0.25]]
    """
    logits = ops.stop_gradient(_checks.as_float32(logits))
    rows = ops.stop_gradient(_checks.as_float32(rows))
    one_hot, valid = _checks.one_hot_labels(labels, logits)
    _check_rows(rows, logits)
    log_q = residual_log_softmax(rows, one_hot)
    log_p = residual_log_softmax(logits, one_hot)
    kl = _residual_kl(one_hot, log_q, log_p)
    gradient = ops.exp(log_q) * (log_q - log_p - kl[:, None])
    gradient = ops.where(one_hot > 0, 0.0, gradient)
    if valid is not None:
        gradient = ops.where(valid[:, None], gradient, math.nan)
    return gradient


def _check_rows(rows, logits) -> None:
    if tuple(rows.shape) != tuple(logits.shape):
        raise ValueError(
            f"`rows` must have the logits' shape {tuple(logits.shape)} (each example's row of "
            f"the K x K matrix); got {tuple(rows.shape)}."
        )


# --------------------------------------------------------------------------
# keras.losses.Loss classes. Keras's Loss.__call__ reduces the per-example
# values (mean by default) and, under tf.distribute, divides by the number of
# replicas so that the summed gradients are right.
# --------------------------------------------------------------------------


class _OutputLoss(keras.losses.Loss):
    """A loss on the model's logits or, with ``from_logits=False``, on its probabilities.

    ``from_logits=True`` (the default): ``y_pred`` are logits. If ``y_pred``
    is a softmax's output (Keras keeps its logits on it: TensorFlow, eager and
    in ``model.fit``, and PyTorch; not JAX), the loss warns once, naming the
    two fixes, and computes what it was told to.

    ``from_logits=False``: ``y_pred`` are probabilities. The softmax's own
    logits are used where Keras kept them; otherwise ``log(clip(p, 1e-7, 1))``
    (log-probabilities are logits of the same distribution, so every formula
    applies unchanged; an exact 0 gives a finite value and gradient). Teacher
    logits in ``y_true`` are logits either way.

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd.losses import LSRLoss
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        >>> model.compile(optimizer="sgd", loss=LSRLoss(alpha=0.1, from_logits=False))
        >>> p = np.array([[0.8, 0.2]])
        >>> round(float(LSRLoss(alpha=0.1, from_logits=False)(np.array([0]), p)), 4)
        0.2925
    """

    def __init__(self, from_logits: bool, name: str, reduction, dtype):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = _checks.boolean("from_logits", from_logits)
        self._warned = False

    def _logits(self, y_pred):
        """``y_pred`` as logits (see the class); warns once about a softmax given as logits."""
        if not self.from_logits:
            return _outputs.probabilities_as_logits(y_pred)
        if not self._warned and _outputs.softmax_logits(y_pred) is not None:
            self._warned = True
            _outputs.warn_softmax_given_as_logits(type(self).__name__)
        return y_pred

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="keras_softkd")
class BetaLSLoss(_OutputLoss):
    """Beta-LS (:func:`beta_ls`): ``y_true = {"labels", "teacher_logits", "draws"}`` (and ``"ranks"``).

    :class:`keras_softkd.BetaLSModel` calls it with its weight-averaged
    teacher's logits and this step's ``Beta(beta, 1)`` draws.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.losses import BetaLSLoss
        >>> y = {"labels": np.array([0]), "teacher_logits": np.array([[1.0, 0.0, 0.0]]),
        ...      "draws": np.array([0.8])}
        >>> round(float(BetaLSLoss(alpha=0.6)(y, np.array([[2.0, 0.0, 0.0]]))), 4)
        0.4795
    """

    def __init__(self, alpha: float = 0.6, from_logits: bool = True,
                 reduction="sum_over_batch_size", name="beta_ls", dtype=None):
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.alpha = _checks.in_closed_range("alpha", alpha, 0.0, 1.0)

    def call(self, y_true, y_pred):
        keys = set(y_true) if isinstance(y_true, dict) else set()
        if not {"labels", "teacher_logits", "draws"} <= keys <= {"labels", "teacher_logits", "draws", "ranks"}:
            raise ValueError(
                "BetaLSLoss expects y_true = {'labels': ..., 'teacher_logits': ..., 'draws': ...} "
                f"(and optionally 'ranks'); got {sorted(keys) or type(y_true).__name__}."
            )
        return beta_ls(
            y_true["labels"], self._logits(y_pred), y_true["teacher_logits"], y_true["draws"],
            self.alpha, y_true.get("ranks"),
        )

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="keras_softkd")
class LSRLoss(_OutputLoss):
    """Label smoothing regularization (W 5, 6): ``CE((1-a) p + a u, softmax(z))``.

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd.losses import LSRLoss
        >>> loss = LSRLoss(alpha=0.1)
        >>> round(float(loss(np.array([0, 1]), np.array([[2.0, 0.0], [0.0, 2.0]]))), 4)
        0.2269
    """

    def __init__(self, alpha: float = 0.1, from_logits: bool = True,
                 reduction="sum_over_batch_size", name="lsr", dtype=None):
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.alpha = _checks.in_closed_range("alpha", alpha, 0.0, 1.0)

    def call(self, y_true, y_pred):
        return lsr(y_true, self._logits(y_pred), self.alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="keras_softkd")
class LsrKDLoss(_OutputLoss):
    """LsrKD (W 10), or LsrKD-TC (W 12) when ``gamma`` is given.

    ``(1-a) CE(p, q(1)) + a t KL(u || q(t))``, ``u`` uniform or, with
    ``gamma``, ``q'_c = gamma``, ``q'_m = (1-gamma)/(K-1)``.

    Example:
        >>> import keras, numpy as np
        >>> from keras_softkd.losses import LsrKDLoss
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> model.compile(optimizer="sgd", loss=LsrKDLoss(alpha=0.1, temperature=3.0))
        >>> history = model.fit(np.zeros((8, 4)), np.zeros(8, "int32"), verbose=0)
    """

    def __init__(
        self,
        alpha: float = 0.1,
        temperature: float = 3.0,
        gamma: Optional[float] = None,
        temperature_power: float = 1.0,
        from_logits: bool = True,
        reduction="sum_over_batch_size",
        name="lsrkd",
        dtype=None,
    ):
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.alpha = _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
        self.temperature = _checks.positive("temperature", temperature)
        self.gamma = None if gamma is None else _checks.in_closed_range("gamma", gamma, 0.0, 1.0)
        self.temperature_power = float(temperature_power)

    def call(self, y_true, y_pred):
        return lsrkd(
            y_true, self._logits(y_pred), self.alpha, self.temperature, self.gamma,
            self.temperature_power,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "gamma": self.gamma,
            "temperature_power": self.temperature_power,
        }


@keras.saving.register_keras_serializable(package="keras_softkd")
class KDLoss(_OutputLoss):
    """Distillation from teacher logits (Hinton, W 4), with optional TC (W 16).

    ``(1-a) CE(p, q(1)) + a t^power (1/n) sum_i KL(qT_i(t) || q(t))``.

    The teacher logits travel in ``y_true`` as a dict, because a Keras loss
    sees only ``(y_true, y_pred)``::

        loss = KDLoss(alpha=0.9, temperature=4.0)
        value = loss({"labels": y, "teacher_logits": teacher_logits}, student_logits)

    ``teacher_logits`` is ``(batch, K)`` or ``(n, batch, K)`` (``n`` teachers,
    averaged as in W 14). :class:`keras_softkd.MrKDModel` calls it with its
    memory copies' logits.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.losses import KDLoss
        >>> loss = KDLoss(alpha=0.5, temperature=2.0)
        >>> y = {"labels": np.array([0]), "teacher_logits": np.array([[1.0, 0.0]])}
        >>> round(float(loss(y, np.array([[2.0, 0.0]]))), 4)
        0.1194
    """

    def __init__(
        self,
        alpha: float = 0.9,
        temperature: float = 4.0,
        gamma: Optional[float] = None,
        temperature_power: Optional[float] = None,
        from_logits: bool = True,
        reduction="sum_over_batch_size",
        name="kd",
        dtype=None,
    ):
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.alpha = _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
        self.temperature = _checks.positive("temperature", temperature)
        self.gamma = None if gamma is None else _checks.in_closed_range("gamma", gamma, 0.0, 1.0)
        self.temperature_power = None if temperature_power is None else float(temperature_power)

    def call(self, y_true, y_pred):
        keys = set(y_true) if isinstance(y_true, dict) else set()
        if not {"labels", "teacher_logits"} <= keys <= {"labels", "teacher_logits", "teaching"}:
            raise ValueError(
                "KDLoss expects y_true = {'labels': ..., 'teacher_logits': ...} (and optionally "
                f"'teaching': how many teachers teach); got {sorted(keys) or type(y_true).__name__}."
            )
        return kd(
            y_true["labels"],
            self._logits(y_pred),
            y_true["teacher_logits"],
            self.alpha,
            self.temperature,
            self.gamma,
            self.temperature_power,
            y_true.get("teaching"),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "gamma": self.gamma,
            "temperature_power": self.temperature_power,
        }


@keras.saving.register_keras_serializable(package="keras_softkd")
class PseudoKDLoss(_OutputLoss):
    """Pseudo-KD (P 12, 13): ``CE((1-a) p + a P*, q(1)) + b KL(P* || U)``.

    ``P* = stop_gradient(softmax(z * a / b))``, the student's own prediction
    at temperature ``b / a``, fixed within the step.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.losses import PseudoKDLoss
        >>> loss = PseudoKDLoss(alpha=0.2, beta=1.5)
        >>> round(float(loss(np.array([0]), np.array([[2.0, 0.0, 0.0]]))), 4)
        0.494
    """

    def __init__(
        self,
        alpha: float = 0.2,
        beta: float = 1.5,
        from_logits: bool = True,
        reduction="sum_over_batch_size",
        name="pseudo_kd",
        dtype=None,
    ):
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.alpha = _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
        self.beta = _checks.positive("beta", beta)

    def call(self, y_true, y_pred):
        return pseudo_kd(y_true, self._logits(y_pred), self.alpha, self.beta)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


@keras.saving.register_keras_serializable(package="keras_softkd")
class TFRegLoss(_OutputLoss):
    """TF-reg (Yuan et al. 2020): KD from the hand-made teacher; see :func:`tf_reg`.

    ``form="code"``: ``(1-a) CE(p, q(1)) + a (m/K) KL(softmax(p^d/t) || q(1))``, the
    reference code's loss; ``form="paper"``: ``... + a KL(softmax(p^d/t) || q(t))``.

    Example:
        >>> import numpy as np
        >>> from keras_softkd.losses import TFRegLoss
        >>> loss = TFRegLoss(alpha=0.1, temperature=20.0, multiplier=100.0)
        >>> z = np.array([[2.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, -0.5, -1.0, -1.0]])
        >>> round(float(loss(np.array([0]), z)), 4)
        1.182
    """

    def __init__(
        self,
        alpha: float = 0.1,
        temperature: float = 20.0,
        multiplier: float = 1.0,
        correct_probability: float = 0.99,
        form: str = "code",
        from_logits: bool = True,
        reduction="sum_over_batch_size",
        name="tf_reg",
        dtype=None,
    ):
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.alpha = _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
        self.temperature = _checks.positive("temperature", temperature)
        self.multiplier = _checks.positive("multiplier", multiplier)
        self.correct_probability = _checks.in_closed_range(
            "correct_probability", correct_probability, 0.0, 1.0
        )
        self.form = _checked_form(form)

    def call(self, y_true, y_pred):
        return tf_reg(y_true, self._logits(y_pred), self.alpha, self.temperature, self.multiplier,
                      self.correct_probability, self.form)

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "multiplier": self.multiplier,
            "correct_probability": self.correct_probability,
            "form": self.form,
        }


@keras.saving.register_keras_serializable(package="keras_softkd")
class CSKDLoss(_OutputLoss):
    """CS-KD (Yun et al. 2020): ``CE(p, q(1)) + lam t^2 KL(softmax(z'/t) || q(t))``; see :func:`cs_kd`.

    The partners' logits travel in ``y_true`` as :class:`KDLoss`'s teacher
    logits (the partner plays the teacher), so :class:`keras_softkd.CSKDModel`
    shares :class:`keras_softkd.Distiller`'s step::

        loss = CSKDLoss(temperature=4.0, lam=1.0)
        value = loss({"labels": y, "teacher_logits": partner_logits}, anchor_logits)

    Example:
        >>> import numpy as np
        >>> from keras_softkd.losses import CSKDLoss
        >>> y = {"labels": np.array([0]), "teacher_logits": np.array([[1.0, 0.0]])}
        >>> round(float(CSKDLoss(temperature=4.0, lam=1.0)(y, np.array([[2.0, 0.0]]))), 4)
        0.2484
    """

    def __init__(self, temperature: float = 4.0, lam: float = 1.0,
                 from_logits: bool = True,
                 reduction="sum_over_batch_size", name="cs_kd", dtype=None):
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.temperature = _checks.positive("temperature", temperature)
        self.lam = _checks.in_closed_range("lam", lam, 0.0, math.inf)

    def call(self, y_true, y_pred):
        keys = set(y_true) if isinstance(y_true, dict) else set()
        if keys != {"labels", "teacher_logits"}:
            raise ValueError(
                "CSKDLoss expects y_true = {'labels': ..., 'teacher_logits': <the partners' "
                f"logits>}}; got {sorted(keys) or type(y_true).__name__}."
            )
        return cs_kd(y_true["labels"], self._logits(y_pred), y_true["teacher_logits"],
                     self.temperature, self.lam)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "lam": self.lam}


@keras.saving.register_keras_serializable(package="keras_softkd")
class KRLSLoss(_OutputLoss):
    """KR-LS (Ding et al. 2021, Alg. 1): ``CE(p, q(1)) + alpha KL(p_res || q_res)``; see :func:`kr_ls`.

    The rows ``S_k`` of the matrix travel in ``y_true`` as teacher logits, so
    :class:`keras_softkd.KRLSModel` reduces it as every Keras loss::

        value = KRLSLoss(alpha=1.0)({"labels": y, "teacher_logits": rows}, logits)

    Example:
        >>> import numpy as np
        >>> from keras_softkd.losses import KRLSLoss
        >>> y = {"labels": np.array([0]), "teacher_logits": np.zeros((1, 3))}
        >>> round(float(KRLSLoss(alpha=1.0)(y, np.array([[2.0, 1.0, 0.0]]))), 4)
        0.5186
    """

    def __init__(self, alpha: float = 1.0, from_logits: bool = True,
                 reduction="sum_over_batch_size", name="kr_ls",
                 dtype=None):
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.alpha = _checks.in_closed_range("alpha", alpha, 0.0, math.inf)

    def call(self, y_true, y_pred):
        keys = set(y_true) if isinstance(y_true, dict) else set()
        if keys != {"labels", "teacher_logits"}:
            raise ValueError(
                "KRLSLoss expects y_true = {'labels': ..., 'teacher_logits': <each example's row "
                f"of the matrix>}}; got {sorted(keys) or type(y_true).__name__}."
            )
        return kr_ls(y_true["labels"], self._logits(y_pred), y_true["teacher_logits"], self.alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}
