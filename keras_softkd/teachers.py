"""Teacher distributions of the papers, as log-probabilities.

Every teacher is returned in log space, shape ``(batch, K)``: a teacher with a
zero probability (teacher correction with ``gamma = 1``) holds ``-inf`` there,
and :func:`keras_softkd.losses.kl_divergence` treats ``0 log 0`` as 0. Working
in log space is what keeps saturated logits (``|z| ~ 1e4``) and float16 /
bfloat16 inputs finite: nothing here takes ``log(softmax(.))`` or clips.

* :func:`uniform` -- ``u_m = 1 / K`` (W 5).
* :func:`teacher_correction` -- ``q'_c = gamma``, ``q'_m = (1-gamma)/(K-1)``
  (W 11).
* :func:`memory_replay_correction` -- a teacher's tempered softmax with the
  true class set to ``gamma`` and the rest rescaled (W 16).
* :func:`pseudo_kd_target` -- ``P* = softmax(z * alpha / beta)`` (P 10, 13),
  with no gradient.
* :func:`hand_made` -- TF-reg's manually designed teacher ``softmax(p^d / t)``
  (Yuan et al. 2020, as their code computes it).
* :func:`confidence_ranks` and :func:`beta_smoothing` -- Beta-LS's
  instance-specific smoothed labels (Zhang & Sabuncu 2020, as their code
  computes them; these two are probabilities, not log-probabilities).

All functions use ``keras.ops`` only and run on every Keras backend.
"""

from __future__ import annotations

import math

from keras import ops

from keras_softkd import _checks


def uniform(one_hot_labels) -> "Tensor":  # noqa: F821
    """Log-probabilities of the uniform teacher ``u``: ``log u_m = -log K``.

    Args:
        one_hot_labels: ``(batch, K)`` one-hot labels; only the shape is used.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import teachers
        >>> np.exp(np.asarray(teachers.uniform(np.eye(4)[[0, 2]])))[0]
        array([0.25, 0.25, 0.25, 0.25], dtype=float32)
    """
    one_hot_labels = ops.convert_to_tensor(one_hot_labels, "float32")
    num_classes = ops.shape(one_hot_labels)[-1]
    return ops.zeros_like(one_hot_labels) - math.log(num_classes)


def teacher_correction(one_hot_labels, gamma: float) -> "Tensor":  # noqa: F821
    """Log-probabilities of the corrected uniform teacher ``q'`` (W 11).

    ``q'_m = gamma`` for the true class ``m = c``, ``(1 - gamma) / (K - 1)``
    otherwise. ``gamma = 1/K`` gives back the uniform teacher.

    Args:
        one_hot_labels: ``(batch, K)`` one-hot labels (the true class ``c``).
        gamma: probability of the true class, in ``[0, 1]``.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import teachers
        >>> q = np.exp(np.asarray(teachers.teacher_correction(np.eye(3)[[1]], 0.5)))
        >>> np.round(q, 3)
        array([[0.25, 0.5 , 0.25]], dtype=float32)
    """
    _checks.in_closed_range("gamma", gamma, 0.0, 1.0)
    one_hot_labels = ops.convert_to_tensor(one_hot_labels, "float32")
    num_classes = one_hot_labels.shape[-1]
    if num_classes is None or num_classes < 2:
        raise ValueError(
            f"Teacher correction needs at least 2 classes; got K={num_classes}."
        )
    log_true = _safe_log(gamma)
    log_other = _safe_log((1.0 - gamma) / (num_classes - 1))
    return ops.where(one_hot_labels > 0.5, log_true, log_other)


def memory_replay_correction(
    one_hot_labels, teacher_logits, temperature: float, gamma: float
) -> "Tensor":  # noqa: F821
    """Log-probabilities of a corrected memory-replay teacher ``qhat'(t)`` (W 16).

    With ``qhat = softmax(teacher_logits / t)`` and true class ``c``::

        qhat'_c = gamma
        qhat'_m = (1 - gamma) * qhat_m / (1 - qhat_c)        for m != c

    computed as ``log qhat'_m = log(1 - gamma) + s_m - logsumexp_{j != c}(s_j)``
    with ``s = teacher_logits / t``: the normaliser ``1 - qhat_c`` never
    appears, so a teacher certain of the true class (``qhat_c -> 1``) stays
    finite. ``s_m - logsumexp_{j != c}(s_j)`` is a ``log_softmax`` over the
    classes ``j != c``, which subtracts the maximum first: with saturated
    logits (``|s| ~ 1e3``) a separate ``logsumexp`` would be rounded to the
    float32 spacing at that magnitude (~1e-4) before the subtraction.

    Args:
        one_hot_labels: ``(batch, K)`` one-hot labels.
        teacher_logits: ``(batch, K)`` or ``(n, batch, K)`` logits of ``n``
            teachers (memory copies); each is corrected on its own.
        temperature: ``t > 0``.
        gamma: probability given to the true class, in ``[0, 1]``.

    Returns:
        Log-probabilities with the shape of ``teacher_logits``, no gradient.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import teachers
        >>> q = teachers.memory_replay_correction(
        ...     np.eye(3)[[0]], np.array([[9.0, 1.0, 0.0]]), temperature=1.0, gamma=0.5)
        >>> np.round(np.exp(np.asarray(q)), 3)
        array([[0.5  , 0.366, 0.134]], dtype=float32)
    """
    _checks.positive("temperature", temperature)
    _checks.in_closed_range("gamma", gamma, 0.0, 1.0)
    one_hot_labels = ops.convert_to_tensor(one_hot_labels, "float32")
    teacher_logits = ops.stop_gradient(_checks.as_float32(teacher_logits))
    is_true = one_hot_labels > 0.5
    if len(teacher_logits.shape) == 3:
        is_true = ops.expand_dims(is_true, 0)
    scaled = teacher_logits / temperature
    log_rest_softmax = ops.log_softmax(ops.where(is_true, -math.inf, scaled), axis=-1)
    log_other = _safe_log(1.0 - gamma) + log_rest_softmax
    return ops.where(is_true, _safe_log(gamma), log_other)


def pseudo_kd_target(logits, alpha: float, beta: float) -> "Tensor":  # noqa: F821
    """Log of Pseudo-KD's optimal smoothing distribution ``P*`` (P 10, 13).

    ``P*_j = p_j^(alpha/beta) / sum_j' p_j'^(alpha/beta) = softmax(z * alpha / beta)``:
    the student's own softmax at temperature ``beta / alpha``. It is held fixed
    within a step (P, Algorithm 1), so no gradient flows through it.

    Args:
        logits: ``(batch, K)`` student logits.
        alpha: smoothing coefficient in ``[0, 1]``.
        beta: weight of ``KL(P* || U)``, ``> 0``.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import teachers
        >>> p = np.exp(np.asarray(teachers.pseudo_kd_target(np.array([[2.0, 0.0]]), 0.5, 1.0)))
        >>> np.round(p, 3)
        array([[0.731, 0.269]], dtype=float32)
    """
    _checks.in_closed_range("alpha", alpha, 0.0, 1.0)
    _checks.positive("beta", beta)
    logits = ops.stop_gradient(_checks.as_float32(logits))
    return ops.log_softmax(logits * (alpha / beta), axis=-1)


def hand_made(one_hot_labels, correct_probability: float, temperature: float) -> "Tensor":  # noqa: F821
    """TF-reg's manually designed teacher, ``softmax(p^d / t)``, as log-probabilities.

    ``p^d_c = a`` for the true class, ``(1 - a) / (K - 1)`` otherwise (Yuan et
    al. 2020, "Revisiting Knowledge Distillation via Label Smoothing
    Regularization", Tf-KD_reg; ``a = 0.99`` in their code). The reference
    code (``my_loss_function.py``, ``loss_kd_regularization``) softens it as
    ``softmax(p^d / t)``: the probabilities divided by ``t`` as if they were
    logits, so at ``t = 20`` the teacher is within 0.005 of uniform
    (docs/METHODS.md, TF-reg). No gradient (the labels are constant).

    Args:
        one_hot_labels: ``(batch, K)`` one-hot labels.
        correct_probability: ``a`` in ``(0, 1]``.
        temperature: ``t > 0``.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import teachers
        >>> q = np.exp(np.asarray(teachers.hand_made(np.eye(10)[[0]], 0.99, 20.0)))
        >>> np.round(q[0, :2], 4)
        array([0.1045, 0.0995], dtype=float32)
    """
    _checks.in_closed_range("correct_probability", correct_probability, 0.0, 1.0)
    _checks.positive("temperature", temperature)
    one_hot_labels = ops.convert_to_tensor(one_hot_labels, "float32")
    num_classes = one_hot_labels.shape[-1]
    if num_classes is None or num_classes < 2:
        raise ValueError(f"TF-reg's teacher needs at least 2 classes; got K={num_classes}.")
    other = (1.0 - correct_probability) / (num_classes - 1)
    designed = ops.where(one_hot_labels > 0.5, correct_probability, other)
    return ops.log_softmax(designed / temperature, axis=-1)


def _safe_log(value: float) -> float:
    return math.log(value) if value > 0 else -math.inf


def confidence_ranks(confidence) -> "Tensor":  # noqa: F821
    """Each example's rank by ``confidence`` in its batch, 0 for the least confident.

    ``rank_i = #{j: c_j < c_i} + #{j < i: c_j = c_i}``: ties go by position,
    so the ranks are a permutation of ``0 .. B-1`` on every backend (an
    ``O(B^2)`` count, nothing for a batch of 128).

    Example:
        >>> import numpy as np
        >>> from keras_softkd import teachers
        >>> np.asarray(teachers.confidence_ranks(np.array([0.5, 0.1, 0.9, 0.1]))).tolist()
        [2, 0, 3, 1]
    """
    confidence = ops.convert_to_tensor(confidence)
    size = ops.shape(confidence)[0]
    below = ops.cast(confidence[None, :] < confidence[:, None], "int32")
    position = ops.arange(size, dtype="int32")
    tied_before = ops.cast(confidence[None, :] == confidence[:, None], "int32") * ops.cast(
        position[None, :] < position[:, None], "int32"
    )
    return ops.sum(below + tied_before, axis=1)


def beta_smoothing(one_hot_labels, ranks, draws) -> "Tensor":  # noqa: F821
    """Beta-LS's smoothed labels: the ``r``-th smallest draw ``b`` on the label, ``(1-b)/(K-1)`` elsewhere.

    The example of rank ``r`` (:func:`confidence_ranks` of the teacher's
    probability of the true class) gets ``b = sort(draws)[r]``: the least
    confident example the smallest draw from ``Beta(beta, 1)``, the most
    confident the largest, so an example the teacher finds hard is smoothed
    most (Zhang & Sabuncu 2020, ZhiluZhang123/neurips_2020_distillation @
    f913a07, ``loss.py`` l.7-33).

    Args:
        one_hot_labels: ``(batch, K)``.
        ranks: ``(batch,)`` integer ranks in ``[0, len(draws))``.
        draws: ``(n,)`` draws in ``[0, 1]``, any order, ``n >= batch``.

    Example:
        >>> import numpy as np
        >>> from keras_softkd import teachers
        >>> y = np.eye(3, dtype="float32")[[0, 1]]
        >>> t = teachers.beta_smoothing(y, np.array([1, 0]), np.array([0.9, 0.6], "float32"))
        >>> np.asarray(t, 'float64').round(2).tolist()
        [[0.9, 0.05, 0.05], [0.2, 0.6, 0.2]]
    """
    one_hot_labels = ops.convert_to_tensor(one_hot_labels, dtype="float32")
    num_classes = one_hot_labels.shape[-1]
    on_label = ops.take(ops.sort(ops.cast(draws, "float32")), ops.cast(ranks, "int32"))[:, None]
    elsewhere = (1.0 - on_label) / (num_classes - 1)
    return one_hot_labels * on_label + (1.0 - one_hot_labels) * elsewhere
