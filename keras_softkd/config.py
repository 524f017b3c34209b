"""One experiment as one value: :class:`ExperimentConfig`, with the papers' defaults and checks.

``train.py`` turns flags into an ``ExperimentConfig``; ``experiment.run``
turns the config into a trained model and a ``results.json``. Hyper-parameters
left as ``None`` take the defaults of ``METHODS.md`` for the method and
dataset (:func:`method_defaults`, from the method table
``keras_softkd.methods``); giving one that the method does not use
(``copies`` with ``lsr``) is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from keras_softkd import methods
from keras_softkd.losses import TF_REG_FORMS
from keras_softkd.precision import PRECISIONS, TEACHER_PRECISIONS

# Thin names derived from the method table (keras_softkd.methods), kept for their readers.
METHODS = tuple(methods.names())
DATASETS = ("cifar10", "cifar100", "cinic10")
LR_SCHEDULES = ("cosine", "step")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")

# Which hyper-parameters each method reads (METHODS.md, "Methods").
METHOD_PARAMETERS = {name: tuple(methods.get(name).parameters) for name in METHODS}


class UsageError(ValueError):
    """A bad flag or input: reported as one line, without a traceback."""


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
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    lr_schedule: str = "cosine"
    weight_decay: float = 5e-4
    momentum: float = 0.9
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
    precision: str = "float32"
    teacher_precision: str = "same"
    train_examples: Optional[int] = None
    validation_fraction: float = 0.0
    keep_best: bool = False
    overwrite: bool = False

    def resolved(self) -> "ExperimentConfig":
        """Checks every field and fills the method's defaults; raises :class:`UsageError`."""
        _one_of("method", self.method, METHODS)
        _one_of("dataset", self.dataset, DATASETS)
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _one_of("strategy", self.strategy, STRATEGIES)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("teacher_precision", self.teacher_precision, TEACHER_PRECISIONS)
        if self.teacher_precision != "same" and not methods.get(self.method).teachers:
            uses = [name for name in METHODS if methods.get(name).teachers]
            raise UsageError(
                f"--teacher_precision does not apply to --method={self.method}, which has no "
                f"teachers running without gradients (it is used by: {', '.join(uses)})."
            )
        from keras_softkd import models  # the registry knows the valid names

        _one_of("model", self.model, tuple(models.names()))
        _integer_at_least("epochs", self.epochs, 1)
        _integer_at_least("batch_size", self.batch_size, 1)
        _integer_at_least("seed", self.seed, 0)
        if self.train_examples is not None:
            _integer_at_least("train_examples", self.train_examples, 1)
        _number_in("lr", self.lr, 0.0, math.inf, low_open=True)
        _number_in("weight_decay", self.weight_decay, 0.0, 1.0)
        _number_in("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _number_in("validation_fraction", self.validation_fraction, 0.0, 1.0, high_open=True)
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
        # Flagfiles name output folders with {method} and {seed}: one preset, many runs.
        values["output_dir"] = self.output_dir.replace("{method}", self.method).replace(
            "{seed}", str(self.seed)
        )
        return dataclasses.replace(self, **values)

    def hyperparameters(self) -> dict:
        """The hyper-parameters recorded in ``results.json``."""
        names = (
            *METHOD_HYPERPARAMETERS, "lr",
            "lr_schedule", "weight_decay", "momentum", "batch_size", "train_examples",
            "validation_fraction", "keep_best", "precision", "teacher_precision", "strategy",
        )
        return {name: getattr(self, name) for name in names}

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
