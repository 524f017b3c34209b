"""Where a ResNet-20 step's time goes on TensorFlow's CPU kernels (oneDNN or Eigen), in one process.

Usage: ``python benchmarks/tf_kernels.py STEPS OUTPUT.json``, with the settings to compare in the
environment (``TF_ENABLE_ONEDNN_OPTS=0`` / ``1``; ``ONEDNN_MAX_CPU_ISA=AVX2`` caps oneDNN to AVX2).
Times, interleaved over 3 repeats (``_timing.interleave``): the whole training-mode forward,
forward + backward and step of ``pytorch_comparison.KerasLoop`` (bare ``tf.function`` loops, batch
128), and each op alone at ResNet-20's three stage shapes (batch 128, 3x3, stride 1): convolution
forward, its input gradient (``Conv2DBackpropInput``), its filter gradient (``Conv2DBackpropFilter``),
fused BatchNorm forward + backward, ReLU forward + backward. Prints and writes the median ms of each.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import keras_softkd  # noqa: E402,F401  (its oneDNN default, where the environment has none)
import tensorflow as tf  # noqa: E402

import _timing  # noqa: E402
from pytorch_comparison import KerasLoop  # noqa: E402

steps, warmup, repeats = int(sys.argv[1]), 3, 3
x, y = _timing.synthetic_arrays(128, 10)
loop = KerasLoop(x, y, 128, jit_compile=False)
runners = {f"model:{p}": (lambda p=p: _timing.time_loop(getattr(loop, p), steps, warmup, loop.sync))
           for p in ("forward", "forward_backward", "step")}
rng = np.random.default_rng(0)
for hw, c in ((32, 16), (16, 32), (8, 64)):
    a = tf.constant(rng.normal(size=(128, hw, hw, c)).astype("float32"))
    w = tf.constant(rng.normal(size=(3, 3, c, c)).astype("float32"))
    g = tf.constant(rng.normal(size=(128, hw, hw, c)).astype("float32"))
    sc, of = tf.ones([c]), tf.zeros([c])
    conv = tf.function(lambda a=a, w=w: tf.nn.conv2d(a, w, 1, "SAME"))
    dx = tf.function(lambda a=a, w=w, g=g: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=tf.shape(a), filter=w, out_backprop=g, strides=[1, 1, 1, 1], padding="SAME"))
    dw = tf.function(lambda a=a, w=w, g=g: tf.raw_ops.Conv2DBackpropFilter(
        input=a, filter_sizes=tf.shape(w), out_backprop=g, strides=[1, 1, 1, 1], padding="SAME"))
    def bn(a=a, g=g, sc=sc, of=of):
        with tf.GradientTape() as t:
            t.watch(a)
            out = tf.compat.v1.nn.fused_batch_norm(a, sc, of, is_training=True)[0]
        return t.gradient(out, a, output_gradients=g)
    bn = tf.function(bn)
    relu = tf.function(lambda a=a, g=g: tf.raw_ops.ReluGrad(gradients=g, features=a) + tf.nn.relu(a))
    for name, f in (("conv_fwd", conv), ("conv_dx", dx), ("conv_dw", dw), ("bn_fwd_bwd", bn), ("relu_fwd_bwd_add", relu)):
        runners[f"{name}@{hw}x{hw}x{c}"] = (lambda f=f: _timing.time_loop(f, steps * 3, warmup, lambda r: np.asarray(r).ravel()[:1]))
times = _timing.interleave(runners, repeats, log=lambda line: None)
med = {k: 1e3 * float(np.median([t for b in v for t in b])) for k, v in times.items()}
out = {"command": " ".join(["python"] + sys.argv), "machine": _timing.machine(),
       "load_average_end": _timing.load_average(), "median_ms": med}
print(json.dumps(out, indent=1))
json.dump(out, open(sys.argv[2], "w"), indent=1)
