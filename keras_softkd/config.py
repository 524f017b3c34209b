"""One experiment as one value: :class:`ExperimentConfig`, with the papers' defaults and checks.

``train.py`` turns flags into an ``ExperimentConfig``; ``experiment.run``
turns the config into a trained model and a ``results.json``. Hyper-parameters
left as ``None`` take the defaults of ``METHODS.md`` for the method and
dataset (:func:`method_defaults`, from the method table
``keras_softkd.methods``); giving one that the method does not use
(``copies`` with ``lsr``) is an error, not a silent no-op.

Two protocols, chosen by ``dataset`` (:data:`IMAGE_DATASETS`, :data:`TEXT_DATASETS`):
the training settings left as ``None`` (``epochs``, ``batch_size``, ``lr``,
``lr_schedule``, ``weight_decay``, ``optimizer``, and ``momentum``,
``sequence_length``, ``warmup_fraction`` where they apply) take
:data:`PROTOCOL_DEFAULTS` of the dataset's kind in :meth:`ExperimentConfig.resolved`:

* images (CIFAR, the papers' section 4.1): SGD, momentum 0.9, lr 0.1, batch 128,
  L2 weight decay 5e-4 applied as PyTorch's SGD does, 200 epochs, cosine;
* text (GLUE, P section 4.2): AdamW with PyTorch's defaults (P: "AdamW with the
  default settings": betas 0.9/0.999, eps 1e-8, decoupled weight decay 0.01),
  lr 2e-5 and batch 32 (P's Appendix C's most common values; per task in the
  flagfiles), 10 epochs with a linear warm-up over the first 6% of the steps and a
  linear decay to 0 (RoBERTa's GLUE recipe; P is silent on both), 128 tokens.

Example:
    >>> config = ExperimentConfig(method="pseudo_kd", dataset="rte", model="bert_tiny_scratch")
    >>> resolved = config.resolved()
    >>> resolved.optimizer, resolved.lr, resolved.lr_schedule, resolved.beta
    ('adamw', 2e-05, 'linear', 2.0)
    >>> ExperimentConfig().resolved().optimizer, ExperimentConfig().resolved().lr
    ('sgd', 0.1)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from keras_softkd import methods
from keras_softkd.errors import UsageError
from keras_softkd.data.glue import GLUE_TASKS
from keras_softkd.choices import AUTO, PRECISIONS, TEACHER_PRECISIONS, TF_REG_FORMS

# Thin names derived from the method table (keras_softkd.methods), kept for their readers.
METHODS = tuple(methods.names())
IMAGE_DATASETS = ("cifar10", "cifar100", "cinic10")
TEXT_DATASETS = tuple(GLUE_TASKS)  # the GLUE tasks of P section 4.2
DATASETS = IMAGE_DATASETS + TEXT_DATASETS
LR_SCHEDULES = ("cosine", "step", "linear")
OPTIMIZERS = ("sgd", "adamw")

#: The training settings a ``None`` field takes, by the dataset's kind (module docstring).
PROTOCOL_DEFAULTS = {
    "image": {"epochs": 200, "batch_size": 128, "lr": 0.1, "lr_schedule": "cosine",
              "weight_decay": 5e-4, "optimizer": "sgd"},
    "text": {"epochs": 10, "batch_size": 32, "lr": 2e-5, "lr_schedule": "linear",
             "weight_decay": 0.01, "optimizer": "adamw", "sequence_length": 128},
}
SGD_MOMENTUM = 0.9  # momentum's default with --optimizer=sgd
WARMUP_FRACTION = 0.06  # warmup_fraction's default with --lr_schedule=linear (RoBERTa's GLUE recipe)


def is_text(dataset: str) -> bool:
    """Whether ``dataset`` is a GLUE text task (else one of the image datasets)."""
    return dataset in TEXT_DATASETS
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")

# Which hyper-parameters each method reads (METHODS.md, "Methods").
METHOD_PARAMETERS = {name: tuple(methods.get(name).parameters) for name in METHODS}


# The text models by name (keras_softkd.models.text's aliases and scratch models; also any
# KerasHub preset or local preset directory). Literal here: naming them imports no KerasHub.
TEXT_MODELS = ("distil_roberta_base_en", "bert_tiny_scratch")


def method_defaults(method: str, dataset: str, epochs: int) -> dict:
    """The papers' hyper-parameters for ``method`` on ``dataset`` (METHODS.md), from the method table.

    ``kappa`` (MrKD's refresh interval, in epochs) defaults to ``epochs / 8``:
    the paper's 25 epochs of a 200-epoch run, kept in proportion for shorter runs.

    Example:
        >>> method_defaults("mrkd_tc", "cifar100", 200)
        {'alpha': 0.25, 'temperature': 3.0, 'gamma': 0.25, 'copies': 3, 'kappa': 25.0, 'initial_weights_teach': False}
    """
    return methods.get(method).defaults(dataset, epochs)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run. ``None`` hyper-parameters take the method's defaults."""

    method: str = "ce"
    dataset: str = "cifar10"
    model: str = "resnet20"
    data_dir: Optional[str] = None
    output_dir: str = "runs/{method}/seed{seed}"
    # None: PROTOCOL_DEFAULTS of the dataset's kind (image or text).
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    lr_schedule: Optional[str] = None
    weight_decay: Optional[float] = None
    momentum: Optional[float] = None  # SGD only: None -> 0.9
    optimizer: Optional[str] = None
    sequence_length: Optional[int] = None  # text only
    warmup_fraction: Optional[float] = None  # lr_schedule=linear only: None -> 0.06
    alpha: Optional[float] = None
    temperature: Optional[float] = None
    gamma: Optional[float] = None
    beta: Optional[float] = None
    copies: Optional[int] = None
    kappa: Optional[float] = None
    initial_weights_teach: Optional[bool] = None
    teacher: Optional[str] = None
    multiplier: Optional[float] = None
    correct_probability: Optional[float] = None
    tf_reg_form: Optional[str] = None
    lam: Optional[float] = None
    ema_decay: Optional[float] = None
    ema_horizon: Optional[float] = None
    ema_every: Optional[str] = None
    seed: int = 0
    strategy: str = "auto"
    precision: str = "auto"  # or an explicit policy; resolved() resolves it (keras_softkd.precision)
    teacher_precision: str = "auto"
    train_examples: Optional[int] = None
    validation_fraction: float = 0.0
    eval_examples: Optional[int] = None  # per-epoch evaluation on a subset (images)
    keep_best: bool = False
    overwrite: bool = False

    def resolved(self) -> "ExperimentConfig":
        """Checks every field and fills the protocol's and the method's defaults; raises
        :class:`UsageError`. ``auto`` precisions are resolved last (:meth:`precision_choice`):
        a resolved config holds the values a run uses."""
        _one_of("method", self.method, METHODS)
        _one_of("dataset", self.dataset, DATASETS)
        protocol = self._protocol_defaults()
        if protocol:
            return dataclasses.replace(self, **protocol).resolved()
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("strategy", self.strategy, STRATEGIES)
        _one_of("precision", self.precision, (*PRECISIONS, AUTO))
        _one_of("teacher_precision", self.teacher_precision, (*TEACHER_PRECISIONS, AUTO))
        # An explicit value is checked; auto never fails (it resolves to "same" where it must).
        if self.teacher_precision not in ("same", AUTO) and not methods.get(self.method).teachers:
            uses = [name for name in METHODS if methods.get(name).teachers]
            raise UsageError(
                f"--teacher_precision does not apply to --method={self.method}, which has no "
                f"teachers running without gradients (it is used by: {', '.join(uses)})."
            )
        self._check_model_and_method()
        _integer_at_least("epochs", self.epochs, 1)
        _integer_at_least("batch_size", self.batch_size, 1)
        _integer_at_least("seed", self.seed, 0)
        if self.train_examples is not None:
            _integer_at_least("train_examples", self.train_examples, 1)
        _number_in("lr", self.lr, 0.0, math.inf, low_open=True)
        _number_in("weight_decay", self.weight_decay, 0.0, 1.0)
        if self.optimizer == "sgd":
            _number_in("momentum", self.momentum, 0.0, 1.0, high_open=True)
        elif self.momentum is not None:
            raise UsageError(f"--momentum applies to --optimizer=sgd, not --optimizer={self.optimizer}.")
        if self.lr_schedule == "linear":
            _number_in("warmup_fraction", self.warmup_fraction, 0.0, 1.0, high_open=True)
        elif self.warmup_fraction is not None:
            raise UsageError(
                f"--warmup_fraction applies to --lr_schedule=linear, not --lr_schedule={self.lr_schedule}."
            )
        if is_text(self.dataset):
            _integer_at_least("sequence_length", self.sequence_length, 2)
        elif self.sequence_length is not None:
            raise UsageError(
                f"--sequence_length applies to the text datasets ({', '.join(TEXT_DATASETS)}), "
                f"not --dataset={self.dataset}."
            )
        _number_in("validation_fraction", self.validation_fraction, 0.0, 1.0, high_open=True)
        if self.eval_examples is not None:
            if is_text(self.dataset):
                raise UsageError(
                    f"--eval_examples applies to the image datasets, not --dataset={self.dataset} "
                    "(a GLUE run's per-epoch evaluation is its dev split, also its result)."
                )
            _integer_at_least("eval_examples", self.eval_examples, 1)
        if self.keep_best and self.validation_fraction == 0:
            raise UsageError(
                "--keep_best picks the epoch of best held-out accuracy: set --validation_fraction "
                "> 0 (P holds out 0.1); without a held-out split it would pick on the test set."
            )

        used = METHOD_PARAMETERS[self.method]
        given = {name for name in METHOD_HYPERPARAMETERS if getattr(self, name) is not None}
        for name in sorted(given - set(used)):
            uses = [m for m, params in METHOD_PARAMETERS.items() if name in params]
            raise UsageError(
                f"--{name} does not apply to --method={self.method} (it is used by: "
                f"{', '.join(uses)})."
            )
        values = {**method_defaults(self.method, self.dataset, self.epochs)}
        values.update({name: getattr(self, name) for name in given})
        if "alpha" in values:
            _number_in("alpha", values["alpha"], 0.0, 1.0)
        if "temperature" in values:
            _number_in("temperature", values["temperature"], 0.0, math.inf, low_open=True)
        if "gamma" in values:
            _number_in("gamma", values["gamma"], 0.0, 1.0)
        if "beta" in values:
            _number_in("beta", values["beta"], 0.0, math.inf, low_open=True)
        if "copies" in values:
            _integer_at_least("copies", values["copies"], methods.get(self.method).fewest_copies())
        if "kappa" in values:
            _number_in("kappa", values["kappa"], 0.0, math.inf, low_open=True)
        if "initial_weights_teach" in values and not isinstance(values["initial_weights_teach"], bool):
            raise UsageError(
                "--initial_weights_teach must be true or false; got "
                f"{values['initial_weights_teach']!r}."
            )
        if "multiplier" in values:
            _number_in("multiplier", values["multiplier"], 0.0, math.inf, low_open=True)
        if "correct_probability" in values:
            _number_in("correct_probability", values["correct_probability"], 0.0, 1.0)
        if "tf_reg_form" in values:
            _one_of("tf_reg_form", values["tf_reg_form"], TF_REG_FORMS)
        if "lam" in values:
            _number_in("lam", values["lam"], 0.0, math.inf, high_open=True)
        if "ema_decay" in values:
            _number_in("ema_decay", values["ema_decay"], 0.0, 1.0, high_open=True)
        if "ema_horizon" in values:
            _number_in("ema_horizon", values["ema_horizon"], 0.0, math.inf, low_open=True)
        if "ema_every" in values:
            _one_of("ema_every", values["ema_every"], methods.EMA_EVERY)
            if values["ema_every"] == "kappa" and values["ema_horizon"] <= values["kappa"]:
                raise UsageError(
                    f"--ema_every=kappa averages the snapshots taken every kappa: --ema_horizon "
                    f"(the average's mean age, {values['ema_horizon']:g} epochs) must exceed "
                    f"--kappa ({values['kappa']:g}), e.g. --ema_horizon={3 * values['kappa']:g}."
                )
        for name, required in methods.get(self.method).required().items():
            if not values.get(name):
                raise UsageError(f"--method={self.method} needs --{name}, {required.what}.")
        values["precision"], values["teacher_precision"], _ = self.precision_choice()
        # Flagfiles name output folders with {method} and {seed}: one preset, many runs.
        values["output_dir"] = self.output_dir.replace("{method}", self.method).replace(
            "{seed}", str(self.seed)
        )
        return dataclasses.replace(self, **values)

    def precision_choice(self) -> tuple[str, str, str]:
        """``(precision, teacher_precision, why)``: ``auto`` resolved for this method and
        dataset by :func:`keras_softkd.precision.resolve` (the rule; the hardware is asked only
        where the answer matters); explicit values as they are, ``why`` ``"as given"``."""
        from keras_softkd.precision import resolve as resolve_precision  # asks Keras's backend

        return resolve_precision(
            self.precision, self.teacher_precision,
            has_teachers=methods.get(self.method).teachers, text=is_text(self.dataset),
        )

    def hyperparameters(self) -> dict:
        """The hyper-parameters recorded in ``results.json``.

        An image run records what it always did; ``optimizer``, ``sequence_length`` and
        ``warmup_fraction`` are added where they apply (a text run, AdamW, the linear
        schedule), so the report's cells of earlier image runs still match new ones.
        """
        names = (
            *METHOD_HYPERPARAMETERS, "lr",
            "lr_schedule", "weight_decay", "momentum", "batch_size", "train_examples",
            "validation_fraction", "keep_best", "precision", "teacher_precision", "strategy",
        )
        values = {name: getattr(self, name) for name in names}
        if is_text(self.dataset) or self.optimizer != "sgd":
            values["optimizer"] = self.optimizer
        if is_text(self.dataset):
            values["sequence_length"] = self.sequence_length
        if self.lr_schedule == "linear":
            values["warmup_fraction"] = self.warmup_fraction
        if self.eval_examples is not None:
            values["eval_examples"] = self.eval_examples
        return values

    def _protocol_defaults(self) -> dict:
        """The ``None`` training settings' values for the dataset's kind (empty once filled)."""
        kind = PROTOCOL_DEFAULTS["text" if is_text(self.dataset) else "image"]
        values = {name: value for name, value in kind.items() if getattr(self, name) is None}
        optimizer = values.get("optimizer", self.optimizer)
        if optimizer == "sgd" and self.momentum is None:
            values["momentum"] = SGD_MOMENTUM
        if values.get("lr_schedule", self.lr_schedule) == "linear" and self.warmup_fraction is None:
            values["warmup_fraction"] = WARMUP_FRACTION
        return values

    def _check_model_and_method(self) -> None:
        """An image dataset takes a network of ``keras_softkd.models``; a text dataset a
        text classifier (``keras_softkd.models.text``) and a method that works on text."""
        from keras_softkd import models  # the registry knows the valid names

        images = tuple(models.names())
        if not is_text(self.dataset):
            if self.model not in images:
                raise UsageError(
                    f"--model={self.model!r} is not an image network for --dataset={self.dataset}; "
                    f"choose one of: {', '.join(images)} (text models go with --dataset="
                    f"{'|'.join(TEXT_DATASETS)})."
                )
            return
        if self.model in images:
            raise UsageError(
                f"--model={self.model} is an image network; --dataset={self.dataset} (GLUE) takes "
                f"a text model: {', '.join(TEXT_MODELS)}, a KerasHub preset (roberta_large_en, "
                "...) or a local preset directory."
            )
        if self.teacher_precision not in ("same", AUTO):
            raise UsageError(
                f"--teacher_precision does not apply on the text datasets (--dataset={self.dataset}): "
                "KD's teacher runs once before training, its logits stored; leave it 'same' or "
                "'auto'."
            )
        if not methods.get(self.method).text:
            works = [name for name in METHODS if methods.get(name).text]
            raise UsageError(
                f"--method={self.method} is not available on the text datasets (--dataset="
                f"{self.dataset}); on text use one of: {', '.join(works)}."
            )

    def interval_steps(self, steps_per_epoch: int) -> int:
        """MrKD's kappa in steps: ``round(kappa_epochs * steps_per_epoch)``, at least 1."""
        return max(1, round(self.kappa * steps_per_epoch))


# Every hyper-parameter some method reads, in the order of the fields (results.json's order);
# one without a field comes last (and tests/test_methods.py fails).
_FIELD_ORDER = {field.name: i for i, field in enumerate(dataclasses.fields(ExperimentConfig))}
METHOD_HYPERPARAMETERS = tuple(
    sorted(methods.hyperparameters(), key=lambda name: _FIELD_ORDER.get(name, len(_FIELD_ORDER)))
)


def _one_of(flag: str, value, valid) -> None:
    if value not in valid:
        raise UsageError(f"--{flag}={value!r} is not valid; choose one of: {', '.join(valid)}.")


def _integer_at_least(flag: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"--{flag} must be an integer >= {low}; got {value!r}.")


def _number_in(flag, value, low, high, low_open=False, high_open=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise UsageError(f"--{flag} must be in {interval}; got {value!r}.")
