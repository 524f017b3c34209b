"""Writes the notebooks of this folder from the cells below (run from anywhere).

    python notebooks/make_notebooks.py

The notebooks are generated so that they are reviewed as code: edit this file,
run it, and commit both it and the ``.ipynb`` files (without outputs;
``tests/test_notebooks.py`` checks they match this file and executes them).
Each notebook's first code cell is tagged ``parameters`` (papermill's
convention): the tests run the notebook with a cell after it that turns the
sizes down.
"""

from __future__ import annotations

import pathlib
import textwrap

import nbformat

HERE = pathlib.Path(__file__).resolve().parent

CIFAR10_CLASSES = (
    '["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]'
)

SMALL_CNN = '''
def small_cnn(num_classes=10):
    """A 3-block CNN (about 0.1 M parameters): fast on a laptop CPU."""
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="small_cnn")


def build_model():
    """MODEL: "small_cnn" above, or a network of the package's registry ("resnet20", ...)."""
    return small_cnn() if MODEL == "small_cnn" else models.build(MODEL, num_classes=10)
'''


def md(text: str):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str, tags: tuple[str, ...] = ()):
    cell = nbformat.v4.new_code_cell(textwrap.dedent(text).strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def parameters(text: str):
    return code(text, tags=("parameters",))


# --------------------------------------------------------------------------
# 01_losses.ipynb
# --------------------------------------------------------------------------

LOSSES = [
    md("""
    # The regularisers, in Keras

    keras-softkd's methods all add something to cross-entropy that keeps the network from
    becoming over-confident. This notebook shows, on real CIFAR-10 images:

    1. **the losses**: each is a `keras.losses.Loss` given to `compile`; one of them is written
       out again in plain `keras.ops` to show what is computed;
    2. **training curves**: a small network trained for a few epochs with several of them;
    3. **the teacher distributions** each method pulls the network towards, for one test image
       (as in the papers' Figure 1): the uniform teacher `u` (LSR, LsrKD), the corrected
       teacher `q'` (LsrKD-TC), a memory-replay teacher, an earlier copy of the network (MrKD),
       and its corrected form (MrKD-TC), and Pseudo-KD's `P*`.

    It runs in a few minutes on a laptop CPU. The first cell holds the parameters: `SCALE`
    shrinks the data (the test suite runs the notebook at `SCALE = 0.02`, 1 epoch).
    """),
    parameters("""
    import os

    SCALE = 1.0  # 1.0: 5,000 training and 2,000 test images
    EPOCHS = 6
    MODEL = "small_cnn"  # or a network of keras_softkd.models, e.g. "resnet20" (slower)
    # A folder with cifar10_train.npz and cifar10_test.npz; None: TensorFlow Datasets downloads CIFAR-10.
    DATA_DIR = os.environ.get("KERAS_SOFTKD_DATA_DIR")
    SEED = 0
    """),
    code(f"""
    TRAIN_EXAMPLES = max(128, int(5000 * SCALE))
    TEST_EXAMPLES = max(128, int(2000 * SCALE))
    BATCH_SIZE = 128
    CLASSES = {CIFAR10_CLASSES}

    import keras_softkd  # first: it keeps TensorFlow's start-up lines out of the output
    import logging
    import time
    import warnings

    import keras
    import matplotlib.pyplot as plt
    import numpy as np
    from keras import ops
    from matplotlib.ticker import MaxNLocator

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes: one model per loss
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # our datasets shuffle themselves

    from keras_softkd import data, losses, metrics, models, teachers

    x_train, y_train = data.take_subset(*data.load("cifar10", "train", DATA_DIR), TRAIN_EXAMPLES, SEED)
    x_test, y_test = data.take_subset(*data.load("cifar10", "test", DATA_DIR), TEST_EXAMPLES, SEED)
    print(f"train {{x_train.shape}}, test {{x_test.shape}}, classes {{np.bincount(y_train, minlength=10)}}")
    """),
    md("""
    ## 1. The losses

    Every method is a Keras loss on the network's **logits** (no softmax layer), with the
    papers' CIFAR-10 hyper-parameters:
    """),
    code("""
    LOSSES = {
        "CE": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "LSR": losses.LSRLoss(alpha=0.1),
        "LsrKD": losses.LsrKDLoss(alpha=0.1, temperature=3.0),
        "LsrKD-TC": losses.LsrKDLoss(alpha=0.1, temperature=3.0, gamma=0.25),
        "Pseudo-KD": losses.PseudoKDLoss(alpha=0.2, beta=2.5),
    }
    """),
    md("""
    Their per-example values (the functions under the `Loss` classes) for three predictions of
    the true class 3 ("cat"): confident and right, unsure, confident and wrong. Cross-entropy
    goes to 0 as the network becomes certain of the right class; the regularisers do not: they
    keep a price on certainty itself.
    """),
    code("""
    labels = np.array([3, 3, 3])
    logits = np.zeros((3, 10), "float32")
    logits[0, 3] = 12.0  # confident, right
    logits[1, 3] = 1.0   # unsure
    logits[2, 5] = 12.0  # confident, wrong (says "dog")
    per_example = {
        "CE": losses.ce(labels, logits),
        "LSR": losses.lsr(labels, logits, alpha=0.1),
        "LsrKD": losses.lsrkd(labels, logits, alpha=0.1, temperature=3.0),
        "LsrKD-TC": losses.lsrkd(labels, logits, alpha=0.1, temperature=3.0, gamma=0.25),
        "Pseudo-KD": losses.pseudo_kd(labels, logits, alpha=0.2, beta=2.5),
    }
    print(f"{'':10s} {'confident, right':>17s} {'unsure':>8s} {'confident, wrong':>17s}")
    for name, values in per_example.items():
        a, b, c = np.asarray(values)
        print(f"{name:10s} {a:17.3f} {b:8.3f} {c:17.3f}")
    """),
    md("""
    LsrKD (W, eq. 10), written out in `keras.ops`: cross-entropy with the labels, plus `alpha t`
    times the KL divergence from the uniform teacher `u` to the network's softmax at temperature
    `t`. It agrees with the package's function to float32 precision:
    """),
    code("""
    def lsrkd_by_hand(labels, logits, alpha=0.1, temperature=3.0):
        num_classes = logits.shape[-1]
        log_q = ops.log_softmax(logits, axis=-1)
        cross_entropy = -ops.take_along_axis(log_q, labels[:, None], axis=-1)[:, 0]
        log_q_t = ops.log_softmax(logits / temperature, axis=-1)
        log_u = -np.log(num_classes)
        kl_u_q_t = ops.sum((1.0 / num_classes) * (log_u - log_q_t), axis=-1)
        return (1.0 - alpha) * cross_entropy + alpha * temperature * kl_u_q_t


    np.testing.assert_allclose(
        lsrkd_by_hand(labels, logits), losses.lsrkd(labels, logits, alpha=0.1, temperature=3.0),
        rtol=1e-5,
    )
    print("lsrkd_by_hand == keras_softkd.losses.lsrkd")
    """),
    md("""
    ## 2. Training with them

    The same network, data, augmentation (pad-crop-flip, `keras_softkd.data`) and SGD schedule
    for each loss; only `loss=` changes. The CE run keeps its weights after every epoch: an
    earlier copy serves as the memory-replay teacher in part 3.
    """),
    code(SMALL_CNN),
    code("""
    train = data.train_dataset(x_train, y_train, dataset="cifar10", batch_size=BATCH_SIZE, seed=SEED)
    test = data.eval_dataset(x_test, y_test, dataset="cifar10", batch_size=256)
    steps_per_epoch = int(np.ceil(len(x_train) / BATCH_SIZE))


    class KeepWeights(keras.callbacks.Callback):
        \"\"\"The model's weights after each epoch.\"\"\"

        def on_train_begin(self, logs=None):
            self.weights = []

        def on_epoch_end(self, epoch, logs=None):
            self.weights.append(self.model.get_weights())


    histories, trained, snapshots = {}, {}, KeepWeights()
    for name in ["CE", "LSR", "LsrKD-TC", "Pseudo-KD"]:
        keras.utils.set_random_seed(SEED)  # the same initial weights and data order for every loss
        model = build_model()
        schedule = keras.optimizers.schedules.CosineDecay(0.05, EPOCHS * steps_per_epoch)
        model.compile(
            optimizer=keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=5e-4),
            loss=LOSSES[name],
            metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="nll"),
            ],
        )
        start = time.perf_counter()
        callbacks = [snapshots] if name == "CE" else []
        histories[name] = model.fit(
            train, epochs=EPOCHS, validation_data=test, verbose=0, callbacks=callbacks
        ).history
        trained[name] = model
        scores = metrics.evaluate_logits(y_test, model.predict(test, verbose=0))
        print(f"{name:10s} test error {100 * scores['test_error']:5.2f}%  NLL {scores['test_nll']:.3f}  "
              f"ECE {100 * scores['test_ece']:5.2f}%  ({time.perf_counter() - start:.0f} s)")
    """),
    code("""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    epochs = np.arange(1, EPOCHS + 1)
    for name, history in histories.items():
        left.plot(epochs, 100 * (1 - np.array(history["val_accuracy"])), marker="o", label=name)
        right.plot(epochs, history["val_nll"], marker="o", label=name)
    left.set(xlabel="epoch", ylabel="test error (%)", title="Test error")
    right.set(xlabel="epoch", ylabel="nats", title="Test negative log-likelihood")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    plt.show()
    """),
    md("""
    At this scale (a few thousand images, a few epochs) the differences between methods are
    mostly noise: the papers' gains, a fraction of a percentage point to two points of test
    error, need 200 epochs on the full data and several seeds (`03_reproduce.ipynb` and the
    README's table). Calibration (NLL, ECE) reacts sooner than the error.

    ## 3. The teachers (as in the papers' Figure 1)

    Each method is distillation from some teacher distribution over the 10 classes. For one
    test image:

    * `u`, **uniform** (LSR, LsrKD): every class 1/10;
    * `q'`, **teacher correction** (LsrKD-TC, `gamma = 0.25`): the true class gets `gamma`, the
      others share the rest;
    * **memory replay** (MrKD): the softmax at temperature 3 of an *earlier copy of the network
      itself* (here the CE network half-way through its training);
    * **memory replay, corrected** (MrKD-TC): that copy's distribution with the true class set
      to `gamma` and the other classes rescaled, keeping their order;
    * `P*`, **Pseudo-KD**: the network's own softmax at temperature `beta / alpha = 12.5`.
    """),
    code("""
    index = int(np.argmax(y_test == 3))  # the first cat of the test subset
    image, label = x_test[index : index + 1], y_test[index : index + 1]
    one_hot = keras.utils.to_categorical(label, 10)
    inputs = data.normalize(image, "cifar10")

    earlier = build_model()
    earlier.set_weights(snapshots.weights[(EPOCHS - 1) // 2])  # CE after about half its epochs
    copy_logits = earlier(inputs, training=False)
    student_logits = trained["Pseudo-KD"](inputs, training=False)

    distributions = {
        "uniform u (LSR, LsrKD)": teachers.uniform(one_hot),
        "corrected q' (LsrKD-TC)": teachers.teacher_correction(one_hot, gamma=0.25),
        "memory copy, t=3 (MrKD)": ops.log_softmax(copy_logits / 3.0, axis=-1),
        "memory copy, corrected (MrKD-TC)": teachers.memory_replay_correction(
            one_hot, copy_logits, temperature=3.0, gamma=0.25),
        "P* (Pseudo-KD)": teachers.pseudo_kd_target(student_logits, alpha=0.2, beta=2.5),
    }
    fig, axes = plt.subplots(1, 6, figsize=(18, 2.9), gridspec_kw={"width_ratios": [0.7] + [1] * 5})
    axes[0].imshow(image[0])
    axes[0].set_title(f"test image: {CLASSES[int(label[0])]}")
    axes[0].axis("off")
    probabilities = {
        title: np.exp(np.asarray(log_p, dtype="float64"))[0] for title, log_p in distributions.items()
    }
    top = 1.15 * max(p.max() for p in probabilities.values())
    for ax, (title, probs) in zip(axes[1:], probabilities.items()):
        colours = ["C3" if k == label[0] else "C0" for k in range(10)]  # red: the true class
        ax.bar(range(10), probs, color=colours)
        ax.set_xticks(range(10), [c[:4] for c in CLASSES], rotation=90, fontsize=7)
        ax.set_ylim(0, top)
        ax.set_title(title, fontsize=9)
    plt.tight_layout()
    plt.show()
    """),
    md("""
    The fixed teachers (`u`, `q'`) say nothing about which wrong classes are plausible; the
    memory copy does (a cat is more like a dog than a truck), and the correction keeps that
    information while fixing how much mass the true class gets, even when the copy was wrong.
    `02_mrkd.ipynb` shows the memory copies during training.
    """),
]


# --------------------------------------------------------------------------
# 02_mrkd.ipynb
# --------------------------------------------------------------------------

MRKD = [
    md("""
    # Memory-replay distillation: `MrKDModel`

    `keras_softkd.MrKDModel` wraps any Keras classifier. During training it keeps `n` copies of
    the network's weights, taken every `kappa` steps (W, Algorithm 1): at a refresh copy 1
    becomes the current network, copy 2 the old copy 1, and so on. The network is trained with
    cross-entropy plus distillation from the copies' softened predictions (temperature `t`).

    This notebook wraps a network, watches what the copies do step by step, and measures what
    they cost. It runs in a few minutes on a laptop CPU; the first cell holds the parameters
    (the test suite turns them down).
    """),
    parameters("""
    import os

    SCALE = 1.0  # 1.0: 2,000 training images
    MODEL = "resnet20"  # a network of keras_softkd.models, or "small_cnn" (defined below)
    EPOCHS = 3
    COPIES = 3
    KAPPA_STEPS = 8  # steps between refreshes (the paper: 1/8 of the run, 25 of 200 epochs)
    TIMING_STEPS = 10  # timed steps per variant and round in the cost section
    TIMING_ROUNDS = 3
    DATA_DIR = os.environ.get("KERAS_SOFTKD_DATA_DIR")  # None: TensorFlow Datasets downloads CIFAR-10
    SEED = 0
    """),
    code("""
    TRAIN_EXAMPLES = max(128, int(2000 * SCALE))
    PROBE_EXAMPLES = max(64, int(128 * SCALE))
    BATCH_SIZE = 128
    TEMPERATURE = 3.0

    import keras_softkd  # first: it keeps TensorFlow's start-up lines out of the output
    import logging
    import time
    import warnings

    import keras
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf
    from keras import ops

    from keras_softkd import MrKDModel, data, losses, models

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes: one model per variant
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # our datasets shuffle themselves

    x_train, y_train = data.take_subset(*data.load("cifar10", "train", DATA_DIR), TRAIN_EXAMPLES, SEED)
    x_test, y_test = data.take_subset(*data.load("cifar10", "test", DATA_DIR), PROBE_EXAMPLES, SEED)
    train = data.train_dataset(x_train, y_train, dataset="cifar10", batch_size=BATCH_SIZE, seed=SEED)
    probe = data.normalize(x_test, "cifar10")  # a fixed batch of test images to watch the copies on
    steps_per_epoch = int(np.ceil(len(x_train) / BATCH_SIZE))
    print(f"{len(x_train)} training images, {steps_per_epoch} steps per epoch, "
          f"{EPOCHS * steps_per_epoch} steps, a refresh every {KAPPA_STEPS}")
    """),
    code(SMALL_CNN),
    md("""
    ## Wrapping a model

    The student is an ordinary Keras model returning logits. `MrKDModel` computes its own loss
    (do not pass `loss=` to `compile`); the metrics are the student's.
    """),
    code("""
    keras.utils.set_random_seed(SEED)
    student = build_model()
    mrkd = MrKDModel(student, copies=COPIES, interval=KAPPA_STEPS, alpha=0.1, temperature=TEMPERATURE)
    mrkd.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    print(f"{student.name}: {student.count_params():,} parameters; "
          f"{len(mrkd.memory)} copies of its {len(mrkd.memory[0])} variables")
    """),
    md("""
    ## What the copies do

    A callback records after every step, for each copy `i`:

    * its distance to the student in weight space, `||theta_i - theta|| / ||theta||`;
    * how far apart their predictions are on a fixed batch of test images:
      `KL(copy_i(t) || student(t))` at the temperature `t = 3`, the quantity the distillation
      term pulls down (`mrkd.copy_logits(x)` gives the copies' logits, shape
      `(copies, batch, classes)`, whether they teach yet or not);
    * the test accuracy of the student and of each copy on that batch.
    """),
    code("""
    @tf.function  # one graph for the n + 1 forward passes
    def probe_logits(x):
        return mrkd.student(x, training=False), mrkd.copy_logits(x)


    class WatchCopies(keras.callbacks.Callback):
        def __init__(self, probe, labels):
            super().__init__()
            self.probe, self.labels = probe, labels
            self.steps, self.distances, self.divergences, self.accuracies = [], [], [], []

        def on_train_batch_end(self, batch, logs=None):
            mrkd = self.model
            weights = [v.numpy() for v in mrkd.student.trainable_variables]
            norm = np.sqrt(sum(np.sum(w**2) for w in weights))
            distances = []
            for copy in mrkd.memory:  # per copy: the trainable variables first, in the same order
                squared = sum(np.sum((c.numpy() - w) ** 2) for c, w in zip(copy, weights))
                distances.append(np.sqrt(squared) / norm)
            student_logits, copy_logits = probe_logits(self.probe)
            student_soft = ops.log_softmax(student_logits / TEMPERATURE, axis=-1)
            copies_soft = ops.log_softmax(copy_logits / TEMPERATURE, axis=-1)
            kl = losses.kl_divergence(copies_soft, student_soft[None])  # (copies, batch)
            predictions = np.argmax(np.concatenate([student_logits[None], copy_logits]), axis=-1)
            self.steps.append(int(mrkd.step.numpy()))
            self.distances.append(distances)
            self.divergences.append(np.mean(kl, axis=1))
            self.accuracies.append(np.mean(predictions == self.labels[None], axis=1))


    watch = WatchCopies(probe, y_test)
    start = time.perf_counter()
    history = mrkd.fit(train, epochs=EPOCHS, verbose=0, callbacks=[watch])
    print(f"{EPOCHS} epochs in {time.perf_counter() - start:.0f} s (with the watching); "
          f"training accuracy {history.history['accuracy'][-1]:.3f}")
    """),
    code("""
    steps = np.array(watch.steps)
    panels = [
        (np.array(watch.distances), "||copy - student|| / ||student||", 1.0),
        (np.array(watch.divergences), f"KL(copy || student), t={TEMPERATURE:g}", 1.0),
        (np.array(watch.accuracies)[:, 1:], "test accuracy (%)", 100.0),
    ]
    refreshes = [s for s in steps if s % KAPPA_STEPS == 0]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for ax, (values, label, scale) in zip(axes, panels):
        for i in range(COPIES):
            ax.plot(steps, scale * values[:, i], label=f"copy {i + 1}")
        for s in refreshes:
            ax.axvline(s, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[2].plot(steps, 100 * np.array(watch.accuracies)[:, 0], color="black", label="student")
    axes[0].set_title("Memory copies during training (dotted: refresh steps)")
    axes[2].set_xlabel("step")
    axes[2].legend(loc="upper left", fontsize="small")
    plt.show()
    """),
    md("""
    Before the first refresh all copies hold the initial weights, so their lines coincide; they
    do not teach yet (a copy teaches once refreshed: in inference mode an untrained network's
    BatchNorm does not normalise, and deep ones then predict one class for every image), so the
    first `kappa` steps are plain cross-entropy, the next `kappa` distil from copy 1 alone, and so
    on. At each refresh copy 1 becomes the student (distance and divergence drop to almost 0: the
    values are taken after that step's update), and each older copy takes the place of the
    one before it, so copy `i` always lags the student by `(i - 1) kappa` to `i kappa` steps.
    Between refreshes the student moves away from its copies, and the older the copy the
    further it is. The distillation term pulls the student's predictions towards those of
    its recent past: a teacher that needs no pre-training.

    `fit` logs what the teachers teach, per epoch: `teaching_copies` (how many copies taught,
    averaged over the epoch's steps), `teacher_accuracy` (their top-1 accuracy on the training
    batches) and `teacher_top_probability` (their mean top probability at the temperature; near 1
    would be a teacher that teaches one class). They are in `history.csv` and TensorBoard too.
    """),
    code("""
    for key in ("teaching_copies", "teacher_accuracy", "teacher_top_probability", "accuracy"):
        print(f"{key:24s}", "  ".join(f"{value:6.3f}" for value in history.history[key]))
    """),
    md("""
    After training, `mrkd.student` is the trained network (save that one); `mrkd.evaluate`
    runs the student alone and reports its cross-entropy as the loss, and its metrics.
    """),
    code("""
    test = data.eval_dataset(x_test, y_test, dataset="cifar10", batch_size=256)
    print(mrkd.evaluate(test, verbose=0, return_dict=True))
    """),
    md("""
    ## The cost

    Each training step runs the student forward and backward, plus one forward pass per copy
    (in inference mode, without gradients); the refresh, a copy of the weights every `kappa`
    steps, is negligible. Below, step times of plain cross-entropy, MrKD-1 and MrKD-3 on the
    same network and batches: the three models take turns for `TIMING_ROUNDS` rounds (so
    that a busy machine slows them alike) and the median step time of each is shown.
    `benchmarks/mrkd_overhead.py` measures the same thing more carefully.
    """),
    code("""
    class StepTimes(keras.callbacks.Callback):
        \"\"\"Seconds between consecutive steps (not the first step of a fit, which traces).\"\"\"

        def __init__(self):
            super().__init__()
            self.times, self._last = [], None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self._last is not None:
                self.times.append(now - self._last)
            self._last = now


    def make(variant):
        keras.utils.set_random_seed(SEED)
        net = build_model()
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        if variant == "CE":
            net.compile(optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            return net
        copies = int(variant.split("-")[1])
        model = MrKDModel(net, copies=copies, interval=KAPPA_STEPS, alpha=0.1, temperature=TEMPERATURE)
        model.compile(optimizer)
        return model


    variants = {name: make(name) for name in ["CE", "MrKD-1", "MrKD-3"]}
    times = {name: [] for name in variants}
    batches = train.repeat()
    for _ in range(TIMING_ROUNDS):
        for name, model in variants.items():
            timer = StepTimes()
            model.fit(batches, epochs=1, steps_per_epoch=TIMING_STEPS + 1, verbose=0, callbacks=[timer])
            times[name] += timer.times
    step_ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    for name, ms in step_ms.items():
        print(f"{name:7s} {ms:7.1f} ms/step  x{ms / step_ms['CE']:.2f} of CE  ({len(times[name])} steps)")
    """),
    code("""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(step_ms), list(step_ms.values()), color=["C0", "C1", "C2"])
    ax.set(ylabel="ms per training step", title=f"{MODEL}, batch {BATCH_SIZE}, this machine")
    plt.show()
    """),
    md("""
    A forward pass in inference mode costs roughly a third of a training step, so expect
    MrKD-`n` to cost about `1 + n/3` times a cross-entropy step; on a CPU shared with other
    work the measured ratios scatter around that. The extra memory is `n` copies of the
    weights, not of the activations. The loss-only methods (LSR, LsrKD, LsrKD-TC, Pseudo-KD)
    add a few operations on the logits and nothing else.
    """),
]


# --------------------------------------------------------------------------
# 03_reproduce.ipynb
# --------------------------------------------------------------------------

REPRODUCE = [
    md("""
    # Reproducing a table: `keras_softkd.grid` and `keras_softkd.report`

    The papers' tables are methods x networks, averaged over seeds. `keras_softkd.grid` runs
    such a grid, one `train.py` process per cell (a crash loses only that cell), skips the
    cells already done and resumes interrupted ones; `keras_softkd.report` turns the runs'
    `results.json` files into the tables (mean ± std over seeds of test error, NLL and ECE) and
    a plot of test error per epoch.

    Here on a subset of CIFAR-10 small enough for a laptop CPU (a few minutes);
    docs/results.md has the command for the longer CPU reproduction. The first cell holds the parameters
    (the test suite turns them down).
    """),
    parameters("""
    import os

    SCALE = 1.0  # 1.0: 1,500 training and 1,000 test images per run
    METHODS = "ce,lsrkd_tc,mrkd1"  # grid columns: ce lsr lsrkd lsrkd_tc pseudo_kd mrkd<N> mrkd<N>_tc
    SEEDS = "0,1"
    EPOCHS = 3
    WORK_DIR = "runs/notebook_03"  # the data subset and the grid's runs go here (git ignores runs/)
    DATA_DIR = os.environ.get("KERAS_SOFTKD_DATA_DIR")  # None: TensorFlow Datasets downloads CIFAR-10
    """),
    code("""
    TRAIN_EXAMPLES = max(64, int(1500 * SCALE))
    TEST_EXAMPLES = max(64, int(1000 * SCALE))

    import keras_softkd  # first: it keeps TensorFlow's start-up lines out of the output
    import pathlib
    import shlex

    import numpy as np
    from IPython.display import Image, Markdown, display

    from keras_softkd import data, grid, report

    work = pathlib.Path(WORK_DIR)
    subset = work / "data"  # what train.py reads: cifar10_train.npz and cifar10_test.npz
    subset.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", TRAIN_EXAMPLES), ("test", TEST_EXAMPLES)):
        x, y = data.take_subset(*data.load("cifar10", split, DATA_DIR), count, seed=0)
        np.savez(subset / f"cifar10_{split}.npz", x=x, y=y)
    print(sorted(p.name for p in subset.iterdir()))
    """),
    md("""
    ## The grid

    Its command line; in Python, `grid.main` takes the same arguments. `--methods` names the
    columns as the flagfiles do (`mrkd1` is `--method=mrkd --copies=1`, `mrkd3_tc` is
    `--method=mrkd_tc --copies=3`; `lsr:alpha=0.2` sets a column's own hyper-parameter), and
    every other flag goes to each `train.py` run. `--dry_run` shows the cells and commands:
    """),
    code("""
    runs_dir = work / "runs"
    ARGS = [
        f"--methods={METHODS}", "--models=resnet20", f"--seeds={SEEDS}", f"--output_root={runs_dir}",
        f"--epochs={EPOCHS}", "--batch_size=128", f"--data_dir={subset}",
    ]
    print("python -m keras_softkd.grid " + shlex.join(ARGS), end="\\n\\n")
    assert grid.main(ARGS + ["--dry_run"]) == 0
    """),
    md("""
    Running it: one line per cell, each run's output in its folder's `train.log`, and the
    tables at the end (also written to `report.md`, with the plot `curves.png`).
    """),
    code("""
    status = grid.main(ARGS)
    assert status == 0, "a cell failed: see its train.log"
    """),
    md("""
    ## Reading the results

    `report.collect` loads every completed run under a folder; `report.table` makes one table
    (rows dataset and network, a column per method, cells `mean ± std (seeds)`).
    """),
    code("""
    runs = report.collect([runs_dir])
    for metric in ("test_error", "test_ece"):
        display(Markdown(f"**{report.METRICS[metric][0]}**\\n\\n" + report.table(runs, metric=metric)))
    """),
    md("""
    A seed fixes the initial weights and the order and augmentation of the batches for every
    method, so two methods run with the same seed start alike. `report.differences` pairs them:
    each cell is a method's test error minus the baseline's on the same seed, mean ± std over the
    seeds. Whether pairing narrows the spread depends on the setting: the trajectories of two
    methods still diverge, and in docs/results.md's 15-epoch reproduction the paired spread is no smaller.
    """),
    code("""
    display(Markdown(report.differences(runs, metric="test_error")))
    """),
    code("""
    print("method    copies seed  error %    NLL  img/s wall s")
    for run in sorted(runs, key=lambda r: (r["method"], r["seed"])):
        copies = run["hyperparameters"].get("copies") or "-"
        if run["test_error"] is None:  # a diverged run is recorded without metrics
            scores = f"{'diverged':>8s} {'':>6s}"
        else:
            scores = f"{100 * run['test_error']:8.2f} {run['test_nll']:6.3f}"
        speed = run["images_per_second"] or 0
        print(f"{run['method']:9s} {copies:>6} {run['seed']:4d} {scores} {speed:6.0f} "
              f"{run['wall_seconds']:6.0f}")
    """),
    md("""
    Test error per epoch, mean over seeds, shaded between the seeds' best and worst:
    """),
    code("""
    display(Image(filename=str(report.plot_curves(runs, work / "curves.png"))))
    """),
    md("""
    ## Running it again

    Every cell is done, so nothing runs again; after an interruption (Ctrl-C, a killed
    process, a reboot) the same command resumes each unfinished run from its last epoch.
    Adding a seed or a method to the command runs only the new cells.
    """),
    code("""
    assert grid.main(ARGS + ["--no_report"]) == 0
    """),
    md("""
    ## How to read it

    With a few hundred images and epochs per run, seeds differ by more than methods do: read
    the `± std` and the paired differences before the means. The papers' differences (fractions
    of a point to two points of test error) need the full training set and schedule;
    docs/results.md shows the longer reproduction on CPU, and the flagfiles in `flags/` hold every cell of the papers' tables
    (`--flagfile=flags/w_table2/cifar10/resnet20_mrkd3.flags`).
    """),
]


NOTEBOOKS = {
    "01_losses.ipynb": LOSSES,
    "02_mrkd.ipynb": MRKD,
    "03_reproduce.ipynb": REPRODUCE,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name``, without outputs, with stable cell ids."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    stem = name.split("_")[0]
    for index, cell in enumerate(NOTEBOOKS[name]):
        cell = nbformat.from_dict(dict(cell))
        cell.id = f"nb{stem}-{index:02d}"
        notebook.cells.append(cell)
    nbformat.validate(notebook)
    return notebook


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def main() -> None:
    for name in NOTEBOOKS:
        (HERE / name).write_text(render(name))
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
