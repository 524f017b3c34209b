"""Training precision (``--precision``) and the precision of inference-only teachers.

**The student** trains under a Keras dtype policy set globally before the
network is built (``experiment.run``): ``float32``, ``mixed_float16`` (float32
variables, float16 compute, loss scaling) or ``mixed_bfloat16`` (float32
variables, bfloat16 compute, no loss scaling needed: bfloat16 has float32's
exponent range). The networks' logits are float32 under every policy (their
``logits`` layer), and the losses and metrics compute in float32.

**Teachers** that run without gradients -- MrKD's memory copies and weight
average, KD's fixed teacher -- can run in bfloat16 while the student trains
in float32 (``--teacher_precision=bfloat16``), through
:class:`keras_softkd.teacher_network.TeacherNetwork`.

**Defaults** (``auto``, :func:`resolve`): both flags default to ``auto``. ``--precision=auto``
is ``mixed_bfloat16`` where the hardware computes bfloat16 natively (:func:`native_bfloat16`),
else ``float32``; ``--teacher_precision=auto`` is ``bfloat16`` where bfloat16 is native, the
method has such teachers, the dataset is an image one and the student trains in float32 (an
explicit ``--precision=float32``), ``same`` everywhere else. The evidence (docs/results.md,
"Precision"): on CIFAR-10 bfloat16 CE's test error differed from float32's by -0.12 ± 1.10
points over 6 seeds (within float32's seed spread, 2.12), at 1.28x the images/s on a CPU with
``avx512_bf16``; bfloat16 teachers' logits stay within the tolerance that
``tests/test_precision.py`` states and bounds, and MrKD-1's test error did not move over 3
seeds (-0.18, +0.22, -0.01 points). A run resolves ``auto`` once, at its start
(``ExperimentConfig.resolved``), records the resolved values and the reason in
``results.json``, and a resumed run keeps the values it started with (``experiment.start``).

This module imports no Keras: ``config`` resolves ``auto`` with it, and on a Linux
machine without GPU or TPU device files the hardware's answer comes from the CPU's
flags alone, so ``train.py --dry_run`` needs no TensorFlow there.

Example:
    >>> resolve("auto", "auto", has_teachers=True, text=False, native=(False, "CPU without bf16"))
    ('float32', 'same', 'precision=auto: float32, not native: CPU without bf16; teacher_precision=auto: same, not native: CPU without bf16')
"""


from __future__ import annotations

import functools
import glob
import sys

from keras_softkd.choices import AUTO, PRECISIONS, TEACHER_PRECISIONS  # noqa: F401



def resolve(precision: str, teacher_precision: str, has_teachers: bool, text: bool,
            native: tuple[bool, str] | None = None) -> tuple[str, str, str]:
    """``(precision, teacher_precision, why)``: ``auto`` of either flag made a value.

    The rule (issue 17; ``docs/METHODS.md``, "Precision"):

    * ``precision="auto"``: ``mixed_bfloat16`` where the hardware computes bfloat16
      natively, else ``float32``;
    * ``teacher_precision="auto"``: ``bfloat16`` where the hardware computes bfloat16
      natively, the method has teachers that run without gradients (``has_teachers``:
      ``keras_softkd.methods``' ``teachers``), the dataset is not a text one (KD's text
      teacher runs once, before training) and the student's resolved precision is
      ``float32``; ``same`` otherwise (a student already computing in bfloat16 or float16
      takes its teachers along);
    * any other value is returned as it is (``check_teacher_precision`` and the config
      check them).

    ``native``: ``(native, why)`` as :func:`native_bfloat16` answers it (NVIDIA GPU of
    compute capability >= 8.0, a TPU, or a CPU with ``avx512_bf16``/``amx_bf16``/``bf16``);
    asked of the hardware only when the answer matters (not for explicit values, a method
    without teachers, or text). ``why`` is one line for ``results.json``.

    Example (the hardware's answer given: the same on every machine):
        >>> cpu = (True, "CPU with avx512_bf16")
        >>> resolve("float32", "auto", has_teachers=True, text=False, native=cpu)
        ('float32', 'bfloat16', 'teacher_precision=auto: bfloat16, native on CPU with avx512_bf16')
        >>> resolve("float32", "auto", True, False, native=(False, "CPU without bf16"))[:2]
        ('float32', 'same')
        >>> resolve("auto", "auto", True, False, native=(True, "TPU"))[:2]
        ('mixed_bfloat16', 'same')
        >>> resolve("float32", "auto", has_teachers=True, text=True)[:2]  # no hardware asked
        ('float32', 'same')
        >>> resolve("mixed_float16", "same", has_teachers=True, text=False)
        ('mixed_float16', 'same', 'as given')
    """
    answer = native

    def hardware() -> tuple[bool, str]:
        nonlocal answer
        if answer is None:
            answer = native_bfloat16()
        return answer

    reasons = []
    if precision == AUTO:
        is_native, where = hardware()
        precision = "mixed_bfloat16" if is_native else "float32"
        how = f"native on {where}" if is_native else f"not native: {where}"
        reasons.append(f"precision=auto: {precision}, {how}")
    if teacher_precision == AUTO:
        if not has_teachers:
            teacher_precision = "same"
            reason = "the method has no teachers running without gradients"
        elif text:
            teacher_precision = "same"
            reason = "a text dataset (KD's teacher runs once, before training)"
        elif precision != "float32":
            bits = "bfloat16" if "bfloat16" in precision else "float16"
            teacher_precision, reason = "same", f"the student computes in {bits}"
        else:
            is_native, where = hardware()
            teacher_precision = "bfloat16" if is_native else "same"
            reason = f"native on {where}" if is_native else f"not native: {where}"
        reasons.append(f"teacher_precision=auto: {teacher_precision}, {reason}")
    return precision, teacher_precision, "; ".join(reasons) or "as given"


@functools.lru_cache(maxsize=None)
def native_bfloat16() -> tuple[bool, str]:
    """Whether the device Keras trains on computes bfloat16 natively, and why (one line).

    * a GPU: NVIDIA compute capability >= 8.0 (Ampere and later have bfloat16
      tensor cores), asked of the backend (TensorFlow's device details,
      ``torch.cuda.get_device_capability``, JAX's ``compute_capability``);
    * a TPU (JAX, TensorFlow): yes;
    * else the CPU, from Linux's ``/proc/cpuinfo`` flags: x86 ``avx512_bf16``
      or ``amx_bf16``, Arm ``bf16``; no file (not Linux): no.

    The backend is asked (and imported) only where a GPU or TPU could be there: on Linux,
    where ``/dev`` has an NVIDIA, AMD (``kfd``) or TPU (``accel``, ``vfio``) device file;
    elsewhere always. What ``auto`` of ``--precision`` and ``--teacher_precision`` asks
    (:func:`resolve`); asked once per process (the answer is kept).
    """
    if accelerator_possible():
        import keras

        backend = keras.backend.backend()
        try:
            accelerator = _accelerator(backend)
        except Exception as error:  # a backend that cannot say: fall back to the CPU
            accelerator = None, f"the {backend} backend did not report its devices ({error})"
        if accelerator[0] is not None:
            return accelerator
    try:
        with open("/proc/cpuinfo") as file:
            text = file.read()
    except OSError:
        return False, "no GPU or TPU, and no /proc/cpuinfo to read the CPU's flags"
    flags = cpu_bfloat16_flags(text)
    if flags:
        return True, f"CPU with {', '.join(flags)}"
    return False, "CPU without avx512_bf16, amx_bf16 or bf16"


#: Device files of the accelerators a Keras backend can train on (Linux): NVIDIA, AMD ROCm, TPU.
ACCELERATOR_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/nvidiactl", "/dev/kfd", "/dev/accel[0-9]*",
                            "/dev/vfio/[0-9]*")


def accelerator_possible() -> bool:
    """False on Linux where ``/dev`` has none of :data:`ACCELERATOR_DEVICE_FILES` (no backend
    can see a GPU or TPU there); True elsewhere (the backend must be asked)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICE_FILES)


def cpu_bfloat16_flags(cpuinfo: str) -> list[str]:
    """The bfloat16 flags of ``/proc/cpuinfo``'s first ``flags``/``Features`` line.

    Example:
        >>> cpu_bfloat16_flags("flags\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile")
        ['avx512_bf16', 'amx_bf16']
        >>> cpu_bfloat16_flags("Features\t: fp asimd bf16 i8mm")
        ['bf16']
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return [flag for flag in value.split() if flag in ("avx512_bf16", "amx_bf16", "bf16")]
    return []


def _accelerator(backend: str) -> tuple:
    """``(True/False, why)`` for the backend's first GPU or TPU, ``(None, "")`` without one."""
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("TPU"):
            return True, "TPU"
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
            return _gpu(capability)
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return _gpu(torch.cuda.get_device_capability(0))
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "tpu":
            return True, "TPU"
        if device.platform == "gpu":
            capability = getattr(device, "compute_capability", None)
            return _gpu(tuple(int(part) for part in str(capability).split(".")) if capability else None)
    return None, ""


def _gpu(capability) -> tuple[bool, str]:
    if capability is None:
        return False, "a GPU of unknown compute capability"
    native = tuple(capability) >= (8, 0)
    return native, f"GPU of compute capability {'.'.join(map(str, capability))}"


def check_teacher_precision(value: str) -> str:
    """``value`` if it is one of :data:`TEACHER_PRECISIONS`, else ``ValueError``."""
    if value not in TEACHER_PRECISIONS:
        raise ValueError(
            f"`teacher_precision` must be one of {', '.join(TEACHER_PRECISIONS)}; got {value!r}."
        )
    return value


