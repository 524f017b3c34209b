"""The same ResNet-20 training step in PyTorch (written by hand) and in keras-softkd, in one run.

Usage (results in benchmarks/README.md; needs the ``bench`` extra, ``pip install -e .[bench]``):

    python benchmarks/pytorch_comparison.py --steps=15 --repeats=3 \\
        --output=benchmarks/results/pytorch_comparison.json --markdown

What is timed, per step (batch 128 of 32x32x3 synthetic images held in memory,
10 classes):

* ``torch_nchw`` -- CIFAR ResNet-20 (He et al. 2016a: 16-32-64 channels, 3x3
  convs without bias, BatchNorm, option-A shortcuts: subsample and append zero
  channels), ``torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4)``,
  cross-entropy; ``zero_grad``, forward, backward, ``step``, the loss read
  back. ``torch.set_num_threads`` = the cores this process may use.
* ``torch_channels_last`` -- the same with the model and the inputs in
  ``torch.channels_last`` memory format (NHWC in memory), which oneDNN prefers.
* ``keras`` -- ``keras_softkd.models.build("resnet20", 10)`` (channels-last),
  ``PyTorchSGD(0.1, momentum=0.9, l2=5e-4)`` (the same update as
  ``torch.optim.SGD``), sparse cross-entropy from logits, ``compile()`` then
  the compiled ``fit`` step (a ``tf.function``), timed between
  ``on_train_batch_end`` calls.
* ``keras_xla`` -- the same compiled with ``jit_compile=True``.
* ``keras_bf16`` -- ``keras`` built under the ``mixed_bfloat16`` policy
  (``train.py --precision=mixed_bfloat16``: float32 weights, bfloat16 compute,
  float32 logits and loss).
* ``keras_fused_bn`` (diagnostic, only when named in ``--variants``) -- ``keras``
  with every ``BatchNormalization`` computed by TensorFlow's fused kernel
  (:class:`FusedBatchNormalization` below: Keras's semantics, one
  ``FusedBatchNormV3`` op). Keras 3 computes BatchNorm from separate ops
  (moments, then normalise), forward and backward; this variant measures what
  that costs.

They are interleaved over ``--repeats`` repeats (``benchmarks/_timing.py``):
median step time, images/s, and our images/s as a ratio to each PyTorch
variant's (> 1: ours is faster).

**The real protocol** (``--real_data_dir=DIR``: ``cifar10_train.npz`` there):
whole epochs of the real CIFAR-10 training set instead of synthetic steps,
``--epochs`` of them per variant, interleaved epoch by epoch (repeat ``r`` is
every variant's ``r``-th epoch). Ours is exactly ``train.py --method=ce``'s
training: ``keras_softkd.data.training_input`` (tf.data, seeded shuffle,
pad-4 random crop and flip, normalisation) feeding the trainer of
``experiment.build_trainer`` (``PyTorchSGD``, the cosine schedule, the
accuracy metric), one ``fit`` epoch per repeat; ``keras_bf16`` the same under
``--precision=mixed_bfloat16``. PyTorch's is a hand-written loop over the same
arrays: a seeded permutation per epoch, the same augmentation in NumPy in the
loop's thread (pad 4, random crop, flip), normalisation, ``torch.optim.SGD``,
cross-entropy. A variant's figure is its training images/s over the epochs
after its first (tracing, warm-up), the median; evaluation is not timed (as
``results.json``'s ``images_per_second``). ``--train_examples`` takes the
first N images (a quick check of the script, not a figure). XLA and the
fused-BatchNorm diagnostic are not offered in this mode.

``--breakdown`` adds, for each framework and layout, the median time of a
training-mode forward pass alone, of forward + backward (gradients, no
update), and of a full step written as a bare loop (``tf.function`` for
TensorFlow, without ``fit``): where the difference between the frameworks
lies, and what ``fit`` itself costs.

Settings to diagnose with: ``--tf_intra_threads``/``--tf_inter_threads`` set
``tf.config.threading`` before anything runs; TensorFlow's oneDNN kernels are
on (``keras_softkd`` sets ``TF_ENABLE_ONEDNN_OPTS=1`` where it is unset, as
for ``train.py``) and are switched off with ``TF_ENABLE_ONEDNN_OPTS=0`` in the
environment; ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=avx2``
emulate an AVX2-only processor on an AVX-512 one (all recorded in the JSON,
with the processor's flags).

PyTorch is imported first, before TensorFlow (torch 2.14 segfaults when
``torch._dynamo`` is imported after TensorFlow), so the torch the environment
has runs it.

On a machine with more runnable threads than cores (other jobs running),
PyTorch's OpenMP threads busy-wait at every barrier and its step can become
several times slower, while TensorFlow's thread pool degrades gently: compare
on a quiet machine, or run with ``OMP_WAIT_POLICY=PASSIVE`` in the environment
and say so (``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import _timing  # noqa: E402

NUM_CLASSES = 10
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
VARIANTS = ("torch_nchw", "torch_channels_last", "keras", "keras_xla", "keras_bf16")
EPOCH_VARIANTS = ("torch_nchw", "torch_channels_last", "keras", "keras_bf16")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DIAGNOSTIC_VARIANTS = ("keras_fused_bn",)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {list(VARIANTS + DIAGNOSTIC_VARIANTS)}")
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="torch.set_num_threads (default: the available cores)")
    parser.add_argument("--tf_intra_threads", type=int, default=None,
                        help="tf.config.threading.set_intra_op_parallelism_threads (default: TF's)")
    parser.add_argument("--tf_inter_threads", type=int, default=None,
                        help="tf.config.threading.set_inter_op_parallelism_threads (default: TF's)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time forward, forward+backward and a bare-loop step per framework")
    parser.add_argument("--real_data_dir", default=None,
                        help="time whole epochs of real CIFAR-10 training (cifar10_train.npz in "
                             "this folder, augmented) instead of synthetic steps")
    parser.add_argument("--epochs", type=int, default=3,
                        help="with --real_data_dir: epochs per variant, interleaved (the first "
                             "is left out of the figure when there are more)")
    parser.add_argument("--train_examples", type=int, default=None,
                        help="with --real_data_dir: only the first N training images (a check)")
    parser.add_argument("--output", default="benchmarks/results/pytorch_comparison.json")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the tables as Markdown (for benchmarks/README.md)")
    args = parser.parse_args(argv)
    args.variant_list = [name for name in args.variants.split(",") if name]
    if args.real_data_dir and args.variants == ",".join(VARIANTS):
        args.variant_list = list(EPOCH_VARIANTS)
    valid = EPOCH_VARIANTS if args.real_data_dir else VARIANTS + DIAGNOSTIC_VARIANTS
    unknown = set(args.variant_list) - set(valid)
    if unknown:
        parser.error(f"--variants must be from {list(valid)}; got unknown {sorted(unknown)}")
    if args.real_data_dir and args.breakdown:
        parser.error("--breakdown times synthetic steps; leave it out with --real_data_dir")
    if min(args.epochs, args.train_examples or 1) < 1:
        parser.error("--epochs and --train_examples must be >= 1")
    if min(args.steps, args.warmup, args.repeats, args.batch_size) < 1:
        parser.error("--steps, --warmup, --repeats and --batch_size must be >= 1")
    return args


# --------------------------------------------------------------------------
# PyTorch: CIFAR ResNet-20, by hand
# --------------------------------------------------------------------------


def torch_resnet20(num_classes: int = NUM_CLASSES):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class BasicBlock(nn.Module):
        def __init__(self, in_channels: int, channels: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.stride = stride
            self.extra_channels = channels - in_channels

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            shortcut = x
            if self.stride != 1 or self.extra_channels:  # option A
                shortcut = x[:, :, :: self.stride, :: self.stride]
                shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
            return F.relu(out + shortcut)

    class ResNet20(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            blocks, channels = [], 16
            for width, stride in ((16, 1), (32, 2), (64, 2)):
                for i in range(3):
                    blocks.append(BasicBlock(channels, width, stride if i == 0 else 1))
                    channels = width
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, num_classes)
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x):
            x = F.relu(self.bn(self.conv(x)))
            x = self.blocks(x)
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return ResNet20()


class TorchTrainer:
    """The hand-written PyTorch training step on in-memory batches."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, channels_last: bool):
        import torch

        torch.manual_seed(0)
        self.torch = torch
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = torch_resnet20().to(memory_format=self.memory_format).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE,
                                         momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.loss = torch.nn.CrossEntropyLoss()
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # NCHW
        labels = torch.from_numpy(y.astype(np.int64))
        self.batches = [
            (images[i : i + batch_size].contiguous(memory_format=self.memory_format),
             labels[i : i + batch_size])
            for i in range(0, len(x), batch_size)
        ]
        self.index = 0

    def _next(self):
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch

    def step(self):
        x, y = self._next()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss

    def forward(self):
        x, _ = self._next()
        with self.torch.no_grad():
            return self.model(x)

    def forward_backward(self):
        x, y = self._next()
        self.model.zero_grad(set_to_none=True)
        loss = self.loss(self.model(x), y)
        loss.backward()
        return loss

    @staticmethod
    def sync(result):
        float(result.detach().reshape(-1)[0])  # CPU ops are synchronous; read anyway


# --------------------------------------------------------------------------
# Ours: the registry's ResNet-20, compiled fit step
# --------------------------------------------------------------------------


def fused_batch_normalization_class():
    """``keras.layers.BatchNormalization`` computed with TensorFlow's fused kernel.

    Same variables, config and formulas as Keras's layer (it normalises with
    the biased batch variance and keeps Keras's moving averages of the biased
    variance); one ``FusedBatchNormV3`` op (oneDNN on x86 CPUs) instead of
    Keras 3's moments-then-normalise ops, forward and backward. Falls back to
    Keras's implementation where the kernel does not apply (other backends,
    masks, synchronised or renormalised BatchNorm, not 4-D channels-last,
    float64, no scale or center).
    """
    import keras
    import tensorflow as tf

    class FusedBatchNormalization(keras.layers.BatchNormalization):
        def _fusable(self, inputs, mask) -> bool:
            return (
                keras.backend.backend() == "tensorflow"
                and mask is None and not self.synchronized and not self.renorm
                and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and self.center and self.scale
                and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "float16", "bfloat16")
            )

        def call(self, inputs, training=None, mask=None):
            if not self._fusable(inputs, mask):
                return super().call(inputs, training=training, mask=mask)
            x = tf.cast(inputs, "float32")
            moving_mean = tf.convert_to_tensor(self.moving_mean)
            moving_variance = tf.convert_to_tensor(self.moving_variance)
            training = bool(training) and self.trainable
            y, batch_mean, batch_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=tf.convert_to_tensor(self.gamma), offset=tf.convert_to_tensor(self.beta),
                mean=tf.zeros_like(moving_mean) if training else moving_mean,
                variance=tf.zeros_like(moving_variance) if training else moving_variance,
                epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
                is_training=training,
            )
            if training:
                # The kernel returns the Bessel-corrected batch variance; Keras's
                # moving average takes the biased one (the one it normalises with).
                count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
                batch_variance = batch_variance * (count - 1.0) / count
                momentum = self.momentum
                self.moving_mean.assign(moving_mean * momentum + batch_mean * (1.0 - momentum))
                self.moving_variance.assign(
                    moving_variance * momentum + batch_variance * (1.0 - momentum))
            return tf.cast(y, self.compute_dtype)

    return FusedBatchNormalization


def keras_resnet20(jit_compile: bool, fused_batchnorm: bool = False, precision: str = "float32"):
    import keras

    keras.mixed_precision.set_global_policy(precision)  # the layers keep the policy they are built in
    try:
        return _keras_resnet20(jit_compile, fused_batchnorm)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _keras_resnet20(jit_compile: bool, fused_batchnorm: bool):
    import keras

    from keras_softkd import models
    from keras_softkd.optimizers import PyTorchSGD

    keras.utils.set_random_seed(0)
    if fused_batchnorm:  # build the registry's network with the fused layer in Keras's place
        original = keras.layers.BatchNormalization
        keras.layers.BatchNormalization = fused_batch_normalization_class()
        try:
            model = models.build("resnet20", NUM_CLASSES)
        finally:
            keras.layers.BatchNormalization = original
        assert any(type(layer) is not original and isinstance(layer, original) for layer in model.layers)
    else:
        model = models.build("resnet20", NUM_CLASSES)
    model.compile(
        optimizer=PyTorchSGD(LEARNING_RATE, momentum=MOMENTUM, l2=WEIGHT_DECAY),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


class KerasLoop:
    """The same Keras model and optimizer, driven by bare ``tf.function`` steps (no ``fit``)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, jit_compile: bool,
                 fused_batchnorm: bool = False):
        import keras
        import tensorflow as tf

        self.tf = tf
        model = keras_resnet20(jit_compile, fused_batchnorm)
        optimizer, loss_fn = model.optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        optimizer.build(model.trainable_variables)
        self.batches = [(tf.constant(x[i : i + batch_size]), tf.constant(y[i : i + batch_size]))
                        for i in range(0, len(x), batch_size)]
        self.index = 0

        def gradients(images, labels):
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(images, training=True))
            return loss, tape.gradient(loss, model.trainable_variables)

        def step(images, labels):
            loss, grads = gradients(images, labels)
            optimizer.apply(grads, model.trainable_variables)
            return loss

        def forward(images, labels):
            return model(images, training=True)

        def forward_backward(images, labels):
            loss, grads = gradients(images, labels)
            return loss, grads

        compile_ = lambda f: tf.function(f, jit_compile=jit_compile)  # noqa: E731
        self._step, self._forward, self._forward_backward = map(compile_, (step, forward, forward_backward))

    def _next(self):
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch

    def step(self):
        return self._step(*self._next())

    def forward(self):
        return self._forward(*self._next())

    def forward_backward(self):
        return self._forward_backward(*self._next())[0]

    @staticmethod
    def sync(result):
        np.asarray(result).reshape(-1)[:1].tolist()


# --------------------------------------------------------------------------


def configure_threads(args) -> dict:
    import torch
    import tensorflow as tf

    from keras_softkd._onednn import onednn_record

    torch.set_num_threads(args.torch_threads or _timing.available_cores())
    if args.tf_intra_threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(args.tf_intra_threads)
    if args.tf_inter_threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.tf_inter_threads)
    return {
        "torch_num_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),  # 0 = TF's default
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "TF_ENABLE_ONEDNN_OPTS": onednn_record(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
    }


def step_runners(args, x, y, cpu: dict) -> dict:
    """``{variant: run one repeat}``; each run appends its steps' CPU seconds to ``cpu[variant]``."""
    import tensorflow as tf

    runners = {}
    for name in args.variant_list:
        cpu[name] = []
        if name.startswith("torch"):
            trainer = TorchTrainer(x, y, args.batch_size, channels_last=name == "torch_channels_last")
            runners[name] = (lambda t=trainer, c=cpu[name]: _timing.time_loop(
                t.step, args.steps, args.warmup, t.sync, cpu_times=c))
        else:
            model = keras_resnet20(jit_compile=name == "keras_xla",
                                   fused_batchnorm=name == "keras_fused_bn",
                                   precision="mixed_bfloat16" if name == "keras_bf16" else "float32")
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size).cache().repeat()
            runners[name] = (lambda m=model, d=data, c=cpu[name]: _timing.time_steps(
                m, d, args.steps, args.warmup, cpu_times=c))
    return runners


def breakdown_runners(args, x, y) -> dict:
    frameworks = {
        "torch_nchw": lambda: TorchTrainer(x, y, args.batch_size, channels_last=False),
        "torch_channels_last": lambda: TorchTrainer(x, y, args.batch_size, channels_last=True),
        "keras_loop": lambda: KerasLoop(x, y, args.batch_size, jit_compile=False),
        "keras_loop_xla": lambda: KerasLoop(x, y, args.batch_size, jit_compile=True),
    }
    if "keras_fused_bn" in args.variant_list:
        frameworks["keras_loop_fused_bn"] = lambda: KerasLoop(x, y, args.batch_size, jit_compile=False,
                                                              fused_batchnorm=True)
    runners = {}
    for name, make in frameworks.items():
        trainer = make()
        for part in ("forward", "forward_backward", "step"):
            runners[f"{name}:{part}"] = (
                lambda t=trainer, part=part: _timing.time_loop(getattr(t, part), args.steps,
                                                               args.warmup, t.sync))
    return runners


# --------------------------------------------------------------------------
# The real protocol: whole epochs of CIFAR-10
# --------------------------------------------------------------------------


class TorchEpochs:
    """The hand-written PyTorch loop over a whole augmented epoch of real images."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, channels_last: bool):
        import torch

        torch.manual_seed(0)
        self.torch = torch
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = torch_resnet20().to(memory_format=self.memory_format).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE,
                                         momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.loss = torch.nn.CrossEntropyLoss()
        self.x, self.y, self.batch_size = x, y.astype(np.int64), batch_size
        self.rng = np.random.default_rng(0)
        self.mean = np.asarray(CIFAR10_MEAN, np.float32) * 255.0
        self.std = np.asarray(CIFAR10_STD, np.float32) * 255.0

    def augment(self, images: np.ndarray) -> np.ndarray:
        """Pad 4 (zeros), a random 32x32 crop, a random horizontal flip, normalised; NHWC float32."""
        n = len(images)
        padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
        rows, cols = self.rng.integers(0, 9, n), self.rng.integers(0, 9, n)
        flips = self.rng.random(n) < 0.5
        out = np.empty((n, 32, 32, 3), np.float32)
        for i in range(n):
            crop = padded[i, rows[i] : rows[i] + 32, cols[i] : cols[i] + 32]
            out[i] = crop[:, ::-1] if flips[i] else crop
        return (out - self.mean) / self.std

    def epoch(self) -> int:
        """One epoch (the last batch may be short); returns the images trained on."""
        torch = self.torch
        order = self.rng.permutation(len(self.x))
        loss = None
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            images = torch.from_numpy(self.augment(self.x[index])).permute(0, 3, 1, 2)
            images = images.contiguous(memory_format=self.memory_format)
            labels = torch.from_numpy(self.y[index])
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.model(images), labels)
            loss.backward()
            self.optimizer.step()
        float(loss.detach())
        return len(order)


class KerasEpochs:
    """``train.py --method=ce``'s training input and trainer, one ``fit`` epoch per call."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int, precision: str):
        import keras

        from keras_softkd import data, experiment
        from keras_softkd.config import ExperimentConfig

        config = ExperimentConfig(method="ce", epochs=epochs, batch_size=batch_size,
                                  precision=precision).resolved()
        keras.utils.set_random_seed(0)
        self.train, self.steps = data.training_input(
            x, y, dataset="cifar10", batch_size=batch_size, seed=0, first_epoch=0, epochs=epochs
        )
        keras.mixed_precision.set_global_policy(precision)
        try:
            self.trainer = experiment.build_trainer(config, NUM_CLASSES, self.steps)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        self.images = len(x)

    def epoch(self) -> int:
        self.trainer.fit(self.train, epochs=1, steps_per_epoch=self.steps, verbose=0)
        return self.images


def epoch_runners(args, x, y, images: dict) -> dict:
    """``{variant: run one epoch}``, each returning ``[seconds]``; ``images[variant]`` the count."""
    import time

    runners = {}
    for name in args.variant_list:
        if name.startswith("torch"):
            trainer = TorchEpochs(x, y, args.batch_size, channels_last=name == "torch_channels_last")
        else:
            precision = "mixed_bfloat16" if name == "keras_bf16" else "float32"
            trainer = KerasEpochs(x, y, args.batch_size, args.epochs, precision)

        def run(trainer=trainer, name=name):
            start = time.perf_counter()
            images[name] = trainer.epoch()
            return [time.perf_counter() - start]

        runners[name] = run
    return runners


def epoch_rows(times: dict, images: dict) -> list[dict]:
    """Per variant: the epochs' seconds and images/s, the median after the first epoch, and our
    images/s over each PyTorch variant's (also epoch by epoch: the same repeat)."""
    torch_names = [name for name in times if name.startswith("torch")]
    rates = {name: [images[name] / block[0] for block in blocks] for name, blocks in times.items()}
    kept = {name: (values[1:] if len(values) > 1 else values) for name, values in rates.items()}
    rows = []
    for name, blocks in times.items():
        row = {
            "variant": name,
            "epoch_seconds": [round(block[0], 2) for block in blocks],
            "images_per_epoch": images[name],
            "images_per_second_by_epoch": [round(rate, 1) for rate in rates[name]],
            "images_per_second": float(np.median(kept[name])),
        }
        for torch_name in torch_names:
            row[f"speed_vs_{torch_name}"] = row["images_per_second"] / float(np.median(kept[torch_name]))
            row[f"speed_vs_{torch_name}_per_epoch"] = [
                ours / theirs for ours, theirs in zip(kept[name], kept[torch_name])
            ]
        rows.append(row)
    return rows


def epoch_table(rows: list[dict]):
    torch_names = [row["variant"] for row in rows if row["variant"].startswith("torch")]
    header = (["variant", "images/s", "images/s by epoch"]
              + [f"x {name} (per epoch)" for name in torch_names])
    body = []
    for row in rows:
        cells = [row["variant"], f"{row['images_per_second']:.0f}",
                 " / ".join(f"{rate:.0f}" for rate in row["images_per_second_by_epoch"])]
        for name in torch_names:
            per_epoch = row[f"speed_vs_{name}_per_epoch"]
            cells.append(f"{row[f'speed_vs_{name}']:.2f} ({min(per_epoch):.2f}-{max(per_epoch):.2f})")
        body.append(cells)
    return header, body


def real_protocol(args, started, machine, threads) -> dict:
    from keras_softkd import data
    from keras_softkd._io import write_json_atomic

    x, y = data.load("cifar10", "train", args.real_data_dir)
    if args.train_examples:
        x, y = x[: args.train_examples], y[: args.train_examples]
    images = {}
    times = _timing.interleave(epoch_runners(args, x, y, images), args.epochs,
                               log=lambda line: print(line.replace("ms/step", "ms/epoch"), flush=True))
    rows = epoch_rows(times, images)
    machine["load_average_end"] = _timing.load_average()
    result = {
        "benchmark": "pytorch_comparison_real_protocol",
        "command": " ".join(["python"] + sys.argv),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine,
        "threads": threads,
        "network": "CIFAR ResNet-20 (option A), 10 classes",
        "data": f"CIFAR-10 train, {len(x)} images ({args.real_data_dir}), pad-crop-flip, normalised",
        "optimizer": f"SGD lr={LEARNING_RATE} momentum={MOMENTUM} weight_decay={WEIGHT_DECAY} "
                     "(ours: train.py's cosine schedule from it)",
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "rows": rows,
    }
    header, body = epoch_table(rows)
    print(f"\nResNet-20, CIFAR-10 train ({len(x)} images), batch {args.batch_size}, {args.epochs} "
          f"interleaved epochs each (figure: median after the first); threads {threads}; "
          f"load average {machine['load_average_start']} -> {machine['load_average_end']}")
    print(_timing.text_table(header, body))
    if args.markdown:
        print("\n" + _timing.markdown_table(header, body))
    write_json_atomic(args.output, result)
    print(f"\nwrote {args.output}")
    return result


def comparison_rows(times: dict, batch_size: int, cpu: dict) -> list[dict]:
    torch_names = [name for name in times if name.startswith("torch")]
    rows = _timing.summarize(times, batch_size, baseline=next(iter(times)), ratio_key="time_ratio",
                             cpu_times=cpu)
    by_name = {row["variant"]: row for row in rows}
    for row in rows:
        row.pop("time_ratio"), row.pop("time_ratio_per_repeat"), row.pop("cpu_time_ratio")
        row["step_times_ms"] = [[round(1e3 * t, 2) for t in block] for block in times[row["variant"]]]
        row["cpu_times_ms"] = [round(1e3 * t, 2) for t in cpu[row["variant"]]]
        for torch_name in torch_names:  # images/s ratio = torch's time / ours
            row[f"speed_vs_{torch_name}"] = (by_name[torch_name]["median_ms_per_step"]
                                             / row["median_ms_per_step"])
            row[f"cpu_speed_vs_{torch_name}"] = (by_name[torch_name]["median_cpu_ms_per_step"]
                                                 / row["median_cpu_ms_per_step"])
            row[f"speed_vs_{torch_name}_per_repeat"] = [
                float(np.median(base) / np.median(ours))
                for ours, base in zip(times[row["variant"]], times[torch_name])
            ]
    return rows


def comparison_table(rows: list[dict]):
    torch_names = [row["variant"] for row in rows if row["variant"].startswith("torch")]
    header = (["variant", "ms/step", "images/s"] + [f"x {name} (per repeat)" for name in torch_names]
              + ["CPU ms/step"])
    body = []
    for row in rows:
        cells = [row["variant"], f"{row['median_ms_per_step']:.1f}", f"{row['images_per_second']:.0f}"]
        for name in torch_names:
            per_repeat = row[f"speed_vs_{name}_per_repeat"]
            cells.append(f"{row[f'speed_vs_{name}']:.2f} ({min(per_repeat):.2f}-{max(per_repeat):.2f})")
        cells.append(f"{row['median_cpu_ms_per_step']:.1f}")
        body.append(cells)
    return header, body


def breakdown_table(times: dict):
    header = ["framework", "forward ms", "forward+backward ms", "full step ms", "backward (fb - f)",
              "update (step - fb)"]
    medians = {name: 1e3 * float(np.median([t for block in blocks for t in block]))
               for name, blocks in times.items()}
    body, rows = [], []
    for framework in dict.fromkeys(name.split(":")[0] for name in times):
        f, fb, s = (medians[f"{framework}:{part}"] for part in ("forward", "forward_backward", "step"))
        rows.append({"framework": framework, "forward_ms": f, "forward_backward_ms": fb, "step_ms": s})
        body.append([framework, f"{f:.1f}", f"{fb:.1f}", f"{s:.1f}", f"{fb - f:.1f}", f"{s - fb:.1f}"])
    return header, body, rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    import torch  # before TensorFlow (imported by Keras in machine()): see the module's docstring

    import keras_softkd  # noqa: F401  (before TensorFlow: its oneDNN default, as train.py runs)

    machine = _timing.machine()
    threads = configure_threads(args)
    machine["torch"] = torch.__version__
    if args.real_data_dir:
        return real_protocol(args, started, machine, threads)
    x, y = _timing.synthetic_arrays(args.batch_size, NUM_CLASSES)
    log = lambda line: print(line, flush=True)  # noqa: E731

    cpu = {}
    times = _timing.interleave(step_runners(args, x, y, cpu), args.repeats, log=log)
    rows = comparison_rows(times, args.batch_size, cpu)
    result = {
        "benchmark": "pytorch_comparison",
        "command": " ".join(["python"] + sys.argv),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine,
        "threads": threads,
        "network": "CIFAR ResNet-20 (option A), 10 classes, synthetic 32x32x3 in memory",
        "optimizer": f"SGD lr={LEARNING_RATE} momentum={MOMENTUM} weight_decay={WEIGHT_DECAY}",
        "batch_size": args.batch_size,
        "steps_per_repeat": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "rows": rows,
    }
    if args.breakdown:
        breakdown_times = _timing.interleave(breakdown_runners(args, x, y), args.repeats, log=log)
        b_header, b_body, result["breakdown"] = breakdown_table(breakdown_times)
    machine["load_average_end"] = _timing.load_average()

    header, body = comparison_table(rows)
    print(f"\nResNet-20, batch {args.batch_size}, median of {args.repeats} x {args.steps} steps; "
          f"threads {threads}; load average {machine['load_average_start']} -> "
          f"{machine['load_average_end']}")
    print(_timing.text_table(header, body))
    if args.breakdown:
        print("\n" + _timing.text_table(b_header, b_body))
    if args.markdown:
        print("\n" + _timing.markdown_table(header, body))
        if args.breakdown:
            print("\n" + _timing.markdown_table(b_header, b_body))

    from keras_softkd._io import write_json_atomic

    write_json_atomic(args.output, result)
    print(f"\nwrote {args.output}")
    return result


if __name__ == "__main__":
    main()
