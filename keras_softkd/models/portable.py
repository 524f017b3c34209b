"""The models a run saves (``model.keras``, ``model_best.keras``): Keras's own layers, float32,
taking the data as users have it.

A trained network here is built for training: TensorFlow's fused BatchNorm
(:class:`keras_softkd.models._layers.BatchNormalization`), a few parameter-free layers
of ours (the option-A shortcut, ShuffleNet's channel split and shuffle), PyTorch's
initialiser, the run's mixed-precision policy, and inputs normalised by the data pipeline.
A saved copy of it would load only where ``keras_softkd`` is imported and would expect
normalised images. What a run saves instead:

* :func:`for_images`: ``image`` (``N x 32 x 32 x 3``, uint8 0-255 as stored, or any
  numeric dtype on that scale) -> ``normalization``, a ``keras.layers.Rescaling`` computing
  the pipeline's ``(x / 255 - mean) / std`` as ``x * (1 / (255 std)) - mean / std``
  (the dataset's channel statistics, :data:`keras_softkd.data.DATASETS`) -> the network's
  layers -> ``logits``, float32 ``N x K`` (no softmax: ``argmax`` gives the class,
  ``keras.ops.softmax`` the probabilities).
* :func:`for_text`: a KerasHub ``TextClassifier`` with its preprocessor, taking raw strings
  (or pairs), saved uncompiled (a run's loss is ours; KerasHub compiles it with its defaults
  where it is loaded); logits.

:func:`for_images` rebuilds the network with :func:`keras_only` (every layer a Keras
layer: ours replaced by Keras's own with the same weights, or by Keras layers computing the
same values) and :func:`for_text` the classifier from its configuration; in both every
policy is ``float32`` (a mixed-precision run's variables are float32 already; its model
computes in float32 where it is loaded). So ``keras.models.load_model`` reads the file
where only Keras (and, for text, KerasHub) is installed.

:func:`without_normalization` is the way back, for a saved model used as a teacher on
the pipeline's normalised images (``--teacher``,
:func:`keras_softkd.models.loading.load_teacher`).

Example:
    >>> import numpy as np
    >>> from keras_softkd import models
    >>> from keras_softkd.models import portable
    >>> network = models.build("resnet20", 10)
    >>> saved = portable.for_images(network, "cifar10")
    >>> images = np.zeros((2, 32, 32, 3), np.uint8)
    >>> saved.predict(images, verbose=0).shape
    (2, 10)
    >>> sorted({type(layer).__module__.split(".")[0] for layer in saved.layers})
    ['keras']
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_softkd.data import info
from keras_softkd.models import _layers

__all__ = ["NORMALIZATION", "for_images", "for_text", "keras_only", "normalization_of",
           "without_normalization"]

#: The name of :func:`for_images`' first layer, the images' normalisation.
NORMALIZATION = "normalization"

_MIXED = ("mixed_float16", "mixed_bfloat16")
_FLOAT32 = "float32"  # every layer made here: the run's global policy may be mixed


def for_images(network: keras.Model, dataset: str) -> keras.Model:
    """``network`` (trained on ``dataset``'s normalised images) as a model of raw images.

    Args:
        network: a functional image classifier taking ``dataset``'s normalised images
            (``keras_softkd.data.normalize``) and returning logits.
        dataset: a key of :data:`keras_softkd.data.DATASETS`, whose channel statistics
            the pipeline normalised with.

    Returns:
        A functional model named as ``network``: ``image`` (``N x 32 x 32 x 3``, uint8
        0-255 or any numeric dtype on that scale) -> ``normalization`` (``Rescaling``)
        -> ``network``'s layers as :func:`keras_only` rebuilds them -> float32 logits.
    """
    stats = info.get(dataset)
    mean, std = np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64)
    normalization = keras.layers.Rescaling(
        scale=(1.0 / (255.0 * std)).astype(np.float32),
        offset=(-mean / std).astype(np.float32),
        dtype=_FLOAT32,
        name=NORMALIZATION,
    )
    return keras_only(network, first=normalization)


def normalization_of(model: keras.Model) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scale, offset)`` of a :func:`for_images` model's normalisation, or ``None`` for a
    model without one (a network that takes normalised images)."""
    layer = _normalization_layer(model)
    if layer is None:
        return None
    scale = np.asarray(keras.ops.convert_to_numpy(layer.scale), np.float32)
    return scale, np.asarray(keras.ops.convert_to_numpy(layer.offset), np.float32)


def without_normalization(model: keras.Model, dataset: str | None = None) -> keras.Model:
    """A :func:`for_images` model on normalised images (its layers, shared); any other model
    unchanged.

    ``dataset``: whose normalised images it will get. Where that normalisation differs from
    the model's own (a teacher trained on another dataset), a ``Rescaling`` first turns the
    one into the other, ``x' = x std_d / std_m + (mean_d - mean_m) / std_m``; ``None``: the
    model's own.
    """
    layer = _normalization_layer(model)
    if layer is None:
        return model
    network = keras.Model(layer.output, model.output, name=model.name)
    if dataset is None:
        return network
    stats = info.get(dataset)
    mean, std = np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64)
    scale, offset = (np.asarray(v, np.float64) for v in normalization_of(model))
    # The model's normalisation of a raw x = (z - mean) / std (z = x / 255 * 255):
    # scale' = std * 255 * scale, offset' = mean * 255 * scale + offset.
    to_scale, to_offset = 255.0 * std * scale, 255.0 * mean * scale + offset
    if np.allclose(to_scale, 1.0, rtol=1e-6, atol=0) and np.allclose(to_offset, 0.0, atol=1e-6):
        return network
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), dtype=_FLOAT32, name="image")
    converted = keras.layers.Rescaling(
        to_scale.astype(np.float32), to_offset.astype(np.float32), name=f"from_{dataset}",
        dtype=_FLOAT32,
    )(inputs)
    return keras.Model(inputs, network(converted), name=model.name)


def for_text(classifier: keras.Model) -> keras.Model:
    """A KerasHub ``TextClassifier`` rebuilt in float32 with the same weights and preprocessor:
    it loads where only Keras and KerasHub are installed (compiled there with KerasHub's
    defaults), and its ``predict`` takes raw strings (a tuple of two arrays for pairs) and
    returns logits."""
    config = classifier.get_config()
    config["backbone"] = _float32(keras.layers.serialize(classifier.backbone))
    config["preprocessor"] = classifier.preprocessor  # shared: it holds no weights
    # Saved uncompiled (no loss of ours, no optimizer state): KerasHub's constructor compiles
    # it with its defaults where it is loaded.
    rebuilt = type(classifier).from_config({**config, "compile": False})
    rebuilt.set_weights(classifier.get_weights())
    return rebuilt


def keras_only(network: keras.Model, first: keras.layers.Layer | None = None) -> keras.Model:
    """``network`` rebuilt from Keras's own layers, every one float32, with its weights.

    * our fused :class:`~keras_softkd.models._layers.BatchNormalization` becomes
      ``keras.layers.BatchNormalization`` (same configuration, unsynchronised: the two
      compute the same values; synchronisation only changes training);
    * :class:`~keras_softkd.models._layers.ZeroPadShortcut` becomes ``MaxPooling2D``
      (pool 1, stride ``s``: ``x[:, ::s, ::s]``), then the zero channels as
      ``Reshape``-``ZeroPadding3D``-``Reshape``; ``ChannelSplit`` ``Reshape``-``Cropping3D``-
      ``Reshape``; ``ChannelShuffle`` ``Reshape``-``Permute``-``Reshape``: the same values;
    * :class:`~keras_softkd.models._layers.TorchDefaultUniform` initialisers become
      ``keras.initializers.RandomUniform`` with the same bound (they matter only to a fresh
      build);
    * a mixed-precision policy becomes ``float32``.

    ``first``: a layer put between the new model's (float32) input and ``network``'s first
    layers (:func:`for_images`' normalisation). Raises ``ValueError`` for a layer that is
    neither Keras's nor one of these.
    """
    # A view: its clone is not compiled with the network's loss (ours, for a ce run).
    view = keras.Model(network.input, network.output, name=network.name)
    source = network.input
    inputs = keras.Input(tuple(source.shape[1:]), dtype=_FLOAT32, name=source.name)
    start = first(inputs) if first is not None else inputs

    def call(layer, *args, **kwargs):
        args, kwargs = keras.tree.map_structure(
            lambda value: start if value is inputs else value, (args, kwargs)
        )
        inline = _INLINE.get(type(layer))
        return inline(layer, *args) if inline else layer(*args, **kwargs)

    rebuilt = keras.models.clone_model(
        view, clone_function=_keras_layer, call_function=call, input_tensors=inputs
    )
    for layer in network.layers:
        if layer.weights:
            rebuilt.get_layer(layer.name).set_weights(layer.get_weights())
    return rebuilt


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _normalization_layer(model: keras.Model):
    try:
        layer = model.get_layer(NORMALIZATION)
    except ValueError:
        return None
    return layer if isinstance(layer, keras.layers.Rescaling) else None


def _is_keras(cls) -> bool:
    return cls.__module__.split(".")[0] == "keras"


def _keras_layer(layer):
    """The Keras layer that replaces ``layer`` (the weightless ones of ``_INLINE`` are kept:
    :func:`keras_only` calls Keras layers in their place)."""
    if isinstance(layer, tuple(_INLINE)):
        return layer
    cls = layer.__class__
    if isinstance(layer, _layers.BatchNormalization):
        cls = keras.layers.BatchNormalization
    if not _is_keras(cls):
        raise ValueError(
            f"Layer {layer.name!r} is a {type(layer).__name__}, not a Keras layer: the saved "
            "model would need its code to load. Build the network from Keras layers."
        )
    config = _float32(layer.get_config())
    if isinstance(layer, _layers.BatchNormalization):
        config["synchronized"] = False
    for key, value in list(config.items()):
        if key.endswith("_initializer") and isinstance(value, dict) and not _is_keras_config(value):
            config[key] = _keras_initializer(layer, key)
    return cls.from_config(config)


def _is_keras_config(config: dict) -> bool:
    return str(config.get("module", "keras")).split(".")[0] == "keras"


def _keras_initializer(layer, key: str):
    """``RandomUniform`` with the bound of ``layer``'s ``TorchDefaultUniform`` ``key``."""
    initializer = getattr(layer, key, None)
    weight = {"kernel_initializer": "kernel", "bias_initializer": "bias",
              "depthwise_initializer": "kernel"}.get(key)
    if weight is None or not isinstance(initializer, _layers.TorchDefaultUniform):
        raise ValueError(
            f"Layer {layer.name!r}: its {key} is a {type(initializer).__name__}, not a Keras "
            "initializer: the saved model would need its code to load."
        )
    bound = initializer.bound(tuple(getattr(layer, weight).shape))
    seed = initializer.get_config()["seed"]
    return keras.initializers.RandomUniform(-bound, bound, seed=seed)


def _float32(config):
    """A layer's (or a model's, nested) ``config`` with every mixed-precision policy
    replaced by ``float32``: a serialised ``DTypePolicy`` or a ``"dtype"`` given by name."""
    if isinstance(config, list):
        return [_float32(value) for value in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and _is_keras_config(config):
        if config.get("config", {}).get("name") in _MIXED:
            return {**config, "config": {**config["config"], "name": _FLOAT32}}
        return config
    return {key: _FLOAT32 if key == "dtype" and value in _MIXED else _float32(value)
            for key, value in config.items()}


def _zero_pad_shortcut(layer, x):
    """``x[:, ::s, ::s]``, then ``filters - channels`` zero channels appended."""
    s, (_, height, width, channels) = layer.strides, x.shape
    name, layers = layer.name, keras.layers
    if s > 1:
        x = layers.MaxPooling2D(1, strides=s, name=f"{name}_subsample", dtype=_FLOAT32)(x)
        height, width = math.ceil(height / s), math.ceil(width / s)
    extra = layer.filters - channels
    if extra:
        x = layers.Reshape((height, width, channels, 1), name=f"{name}_to_3d", dtype=_FLOAT32)(x)
        padding = ((0, 0), (0, 0), (0, extra))
        x = layers.ZeroPadding3D(padding, name=f"{name}_pad", dtype=_FLOAT32)(x)
        x = layers.Reshape((height, width, layer.filters), name=f"{name}_to_2d",
                           dtype=_FLOAT32)(x)
    return x


def _channel_split(layer, x):
    """``(x[..., :c // 2], x[..., c // 2:])``."""
    (_, height, width, channels), name, layers = x.shape, layer.name, keras.layers
    half = channels // 2
    cube = layers.Reshape((height, width, channels, 1), name=f"{name}_to_3d", dtype=_FLOAT32)(x)
    parts = []
    for index, (before, after) in enumerate([(0, channels - half), (half, 0)]):
        part = layers.Cropping3D(((0, 0), (0, 0), (before, after)), name=f"{name}_{index}",
                                 dtype=_FLOAT32)(cube)
        kept = (height, width, channels - before - after)
        parts.append(layers.Reshape(kept, name=f"{name}_{index}_to_2d", dtype=_FLOAT32)(part))
    return tuple(parts)


def _channel_shuffle(layer, x):
    """Channel ``i * (c // g) + j`` to ``j * g + i``: reshape, swap the last two axes, reshape."""
    (_, height, width, channels), name, layers = x.shape, layer.name, keras.layers
    groups = (height, width, layer.groups, channels // layer.groups)
    x = layers.Reshape(groups, name=f"{name}_groups", dtype=_FLOAT32)(x)
    x = layers.Permute((1, 2, 4, 3), name=f"{name}_swap", dtype=_FLOAT32)(x)
    return layers.Reshape((height, width, channels), name=f"{name}_merge", dtype=_FLOAT32)(x)


_INLINE = {
    _layers.ZeroPadShortcut: _zero_pad_shortcut,
    _layers.ChannelSplit: _channel_split,
    _layers.ChannelShuffle: _channel_shuffle,
}
