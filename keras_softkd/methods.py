"""The training methods by name, each declared once: ``methods.get("mrkd_tc")``.

As ``models`` is for networks, this table is for methods: every other place
reads it -- ``config`` (valid names, hyper-parameters, defaults),
``experiment.build_trainer`` (the trainer and its loss), ``train.py``
(``--method`` and the hyper-parameter flags' help), ``report`` (column order
and labels), ``grid`` and ``flags/make_flagfiles.py`` (column names), the
benchmarks (method lists).

An entry (:class:`Method`) holds:

* ``name``: the ``--method`` value and ``results.json``'s ``method``;
* ``label``: the report's column, as the MrKD paper's Table 1 names it;
  ``-{copies}`` is the run's number of memory copies (``MrKD-3-TC``), left
  out when unknown;
* ``help``: one line for ``--method``'s help;
* ``parameters``: the hyper-parameters the method reads, in order, each with
  its default (METHODS.md, "Methods"): a value, :class:`PerDataset`,
  :class:`EpochsOver` or :class:`Required`;
* ``build``: ``build(config, student, setup) -> (trainer, compile_kwargs)``;
  :func:`with_loss` makes one for a method that is a loss on the student's
  logits;
* ``column``: the short spelling with the copies in it (``mrkd{copies}_tc``);
* ``ablations``: boolean hyper-parameters whose runs the report shows in a
  column of their own (``MrKD-3 (initial weights teach)``);
* ``inputs``: what its training batches carry besides the images
  (``keras_softkd.data.TRAINING_INPUTS``): ``"labels"`` (the default),
  ``"indices"`` (each example's index in the training set, for a
  per-example table) or ``"pairs"`` (a same-class partner per example).
* ``text``: whether it runs on the GLUE text tasks (``--dataset=rte``...): tested
  there end to end (tests/test_train_text.py); ``config`` refuses the others on text.
  Its defaults there come from :class:`OnGlue` entries (P section 4.2, Appendix C).
* ``teachers``: whether it has teachers that run without gradients in
  inference mode (MrKD's memories, KD's fixed network): ``--teacher_precision``
  applies to them (``keras_softkd.precision``; its default ``auto`` runs them in
  bfloat16 where the hardware computes it natively). A run-time choice, not a
  hyper-parameter of the method, so not among ``parameters``.

Spellings of one method:

* **method** (``--method``, ``results.json``): ``mrkd_tc``;
* **column** (the canonical short spelling: ``grid --methods``, the
  flagfiles' names and folders, ``benchmarks/*.py --methods``): ``mrkd3_tc``
  is ``--method=mrkd_tc --copies=3``, and every method name is a column too
  (``mrkd_tc``: the default copies). The benchmarks' former ``mrkd-3`` (and
  likewise ``mrkd-3_tc``) is accepted as an alias of ``mrkd3``;
* **label** (the report): ``MrKD-3-TC``.

The table imports no trainer, loss or Keras: a builder imports what it builds when a
run calls it, so ``train.py`` and ``config`` read the table (names, defaults, checks)
before TensorFlow loads.

A new teacher-free loss needs its function and ``Loss`` class in
``losses.py``, one entry below (``build=with_loss(...)``) and its reference
test in ``tests/test_losses.py``; ``tests/test_methods.py`` trains every entry
one step and checks the entries against ``train.py`` and ``ExperimentConfig``.

Example:

>>> from keras_softkd import methods
>>> methods.names()[:4]
['ce', 'lsr', 'lsrkd', 'lsrkd_tc']
>>> methods.get("lsrkd_tc").defaults("cifar100", epochs=200)
{'alpha': 0.1, 'temperature': 3.0, 'gamma': 0.025}
>>> methods.parse_name("mrkd3_tc")
('mrkd_tc', {'copies': 3})
>>> methods.train_flags("mrkd3_tc")
['--method=mrkd_tc', '--copies=3']
>>> methods.get("mrkd_tc").label_for({"copies": 3})
'MrKD-3-TC'
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Union

from keras_softkd.data.glue import GLUE_TASKS

if TYPE_CHECKING:  # for the annotations only: config is above this module
    import keras

    from keras_softkd.config import ExperimentConfig

__all__ = [
    "EpochsOver",
    "Method",
    "OnGlue",
    "PerDataset",
    "Required",
    "Setup",
    "canonical",
    "column_name",
    "counted_columns",
    "flag_help",
    "get",
    "hyperparameters",
    "method_help",
    "names",
    "parse_name",
    "train_flags",
    "with_loss",
]


# --------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PerDataset:
    """A default that differs on CIFAR-100 (the papers' "CIFAR-100 / CIFAR-10, CINIC-10")."""

    cifar100: Any
    other: Any

    def value(self, dataset: str, epochs: int) -> Any:
        return self.cifar100 if dataset == "cifar100" else self.other

    def __str__(self) -> str:
        return f"{_show(self.cifar100)} on cifar100, else {_show(self.other)}"


@dataclasses.dataclass(frozen=True)
class EpochsOver:
    """A default in epochs kept in proportion to the run: ``epochs / divisor``."""

    divisor: int

    def value(self, dataset: str, epochs: int) -> float:
        return epochs / self.divisor

    def __str__(self) -> str:
        return f"epochs/{self.divisor}"


@dataclasses.dataclass(frozen=True)
class OnGlue:
    """A default that differs on the GLUE text tasks (P section 4.2 and Appendix C).

    ``image``: the value (or :class:`PerDataset` rule) on the image datasets; ``glue``:
    one value for every task, or a mapping task -> value.

    Example:
        >>> beta = OnGlue(image=2.5, glue={"rte": 2.0, "sst2": 5.0})
        >>> beta.value("sst2", 10), beta.value("cifar10", 200)
        (5.0, 2.5)
    """

    image: Any
    glue: Any

    def value(self, dataset: str, epochs: int) -> Any:
        if dataset in GLUE_TASKS:
            return self.glue[dataset] if isinstance(self.glue, Mapping) else self.glue
        return self.image.value(dataset, epochs) if isinstance(self.image, PerDataset) else self.image

    def __str__(self) -> str:
        if isinstance(self.glue, Mapping):
            glue = ", ".join(f"{task} {_show(value)}" for task, value in self.glue.items())
        else:
            glue = _show(self.glue)
        return f"{self.image}; on GLUE {glue}"


@dataclasses.dataclass(frozen=True)
class Required:
    """No default: the run must give it; ``what`` completes "--method=kd needs --teacher, ..."."""

    what: str

    def __str__(self) -> str:
        return "required"


Default = Union[bool, int, float, str, PerDataset, EpochsOver, OnGlue, Required]


# --------------------------------------------------------------------------
# The entries
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a method's builder gets besides the resolved config and the student."""

    num_classes: int
    steps_per_epoch: int
    num_examples: int = 0  # training examples (a per-example table's rows)
    epochs: int = 0


Builder = Callable[["ExperimentConfig", "keras.Model", Setup], "tuple[keras.Model, dict]"]

_COPIES = re.compile(r"-\{copies\}")


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method (see the module docstring for the fields)."""

    name: str
    label: str
    help: str
    parameters: Mapping[str, Default]
    build: Builder
    column: str = ""
    ablations: tuple[str, ...] = ()
    inputs: str = "labels"
    teachers: bool = False
    text: bool = False

    def defaults(self, dataset: str, epochs: int) -> dict:
        """The method's defaults for ``dataset`` and a run of ``epochs`` (required ones left out).

        Example:
            >>> get("mrkd").defaults("cifar10", epochs=16)
            {'alpha': 0.1, 'temperature': 3.0, 'copies': 3, 'kappa': 2.0, 'initial_weights_teach': False}
        """
        values = {}
        for name, default in self.parameters.items():
            if isinstance(default, Required):
                continue
            is_rule = isinstance(default, (PerDataset, EpochsOver, OnGlue))
            values[name] = default.value(dataset, epochs) if is_rule else default
        return values

    def required(self) -> dict[str, Required]:
        """The hyper-parameters without a default."""
        return {k: v for k, v in self.parameters.items() if isinstance(v, Required)}

    def label_for(self, values: Mapping[str, Any]) -> str:
        """The report's label of a run with these hyper-parameters.

        Example:
            >>> get("mrkd").label_for({"copies": 1, "initial_weights_teach": True})
            'MrKD-1 (initial weights teach)'
            >>> get("mrkd_tc").label_for({})
            'MrKD-TC'
        """
        copies = values.get("copies")
        label = _COPIES.sub(f"-{copies}" if copies else "", self.label)  # 0 copies: none
        for name in self.ablations:
            if values.get(name):
                label += f" ({name.replace('_', ' ')})"
        return label

    def fewest_copies(self) -> int:
        """1, or 0 for a method whose other teacher can teach alone (its default is 0 copies)."""
        return 0 if self.parameters.get("copies") == 0 else 1

    def column_pattern(self) -> re.Pattern | None:
        """The regular expression of the ``column`` spelling (``mrkd-3`` too), or None."""
        if not self.column:
            return None
        prefix, _, suffix = self.column.partition("{copies}")
        return re.compile(f"^{re.escape(prefix)}-?(\\d+){re.escape(suffix)}$")


def with_loss(make_loss: Callable[["ExperimentConfig", ModuleType], "keras.losses.Loss"]) -> Builder:
    """A builder for a method that is a loss on the student's logits: the student is the trainer.

    ``make_loss(config, losses)`` gets the run's config and the module
    ``keras_softkd.losses``, imported when the run builds its trainer.

    Example:
        >>> build = with_loss(lambda config, losses: losses.LSRLoss(alpha=config.alpha))
    """

    def build(config: "ExperimentConfig", student: "keras.Model", setup: Setup):
        from keras_softkd import losses

        return student, {"loss": make_loss(config, losses)}

    return build


def _cross_entropy(config: "ExperimentConfig", losses: ModuleType) -> "keras.losses.Loss":
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _memory_replay(config: "ExperimentConfig", student: "keras.Model", setup: Setup):
    from keras_softkd.memory_replay import MrKDModel

    interval = config.interval_steps(setup.steps_per_epoch)
    average = {}
    if config.ema_horizon is not None:  # mrkd_ema, mrkd_ema_tc
        every = 1 if config.ema_every == "step" else interval
        horizon = max(1, round(config.ema_horizon * setup.steps_per_epoch))
        # The average's mean age, 1 / (1 - decay) updates, is the horizon.
        average = {"average_decay": max(0.0, 1.0 - every / horizon), "average_interval": every}
    trainer = MrKDModel(
        student, copies=config.copies, interval=interval,
        alpha=config.alpha, temperature=config.temperature, gamma=config.gamma,
        initial_weights_teach=config.initial_weights_teach,
        teacher_precision=config.teacher_precision, **average,
    )
    return trainer, {}


def _beta_smoothing(config: "ExperimentConfig", student: "keras.Model", setup: Setup):
    from keras_softkd.beta_smoothing import BetaLSModel

    return BetaLSModel(
        student, alpha=config.alpha, beta=config.beta, lam=config.ema_decay, seed=config.seed
    ), {}


def _distillation(config: "ExperimentConfig", student: "keras.Model", setup: Setup):
    from keras_softkd.distillation import KDModel
    from keras_softkd.models.loading import load_teacher

    teacher = load_teacher(config.teacher, setup.num_classes, config.sequence_length,
                           dataset=config.dataset)
    trainer = KDModel(
        student, teacher=teacher, alpha=config.alpha, temperature=config.temperature,
        teacher_precision=config.teacher_precision,
    )
    return trainer, {}


def _class_wise(config: "ExperimentConfig", student: "keras.Model", setup: Setup):
    from keras_softkd.class_wise import CSKDModel

    return CSKDModel(student, temperature=config.temperature, lam=config.lam), {}


def _progressive(config: "ExperimentConfig", student: "keras.Model", setup: Setup):
    from keras_softkd.progressive import PSKDModel

    trainer = PSKDModel(
        student, num_examples=setup.num_examples, alpha=config.alpha, epochs=setup.epochs,
        steps_per_epoch=setup.steps_per_epoch,
    )
    return trainer, {}


def _knowledge_refinery(config: "ExperimentConfig", student: "keras.Model", setup: Setup):
    from keras_softkd.knowledge_refinery import KRLSModel

    return KRLSModel(student, alpha=config.alpha), {}


#: Pseudo-KD's beta per GLUE task (P's Appendix C).
_PSEUDO_KD_GLUE_BETA = {"cola": 2.0, "rte": 2.0, "sst2": 5.0, "mrpc": 2.0, "qnli": 4.0, "qqp": 4.0,
                        "mnli": 2.0}
_KAPPA = EpochsOver(8)  # the paper's 25 epochs of 200, in proportion for shorter runs
_MRKD_ALPHA = PerDataset(cifar100=0.25, other=0.1)
#: When a weight average is updated: every step, or at the copies' pace (every kappa).
EMA_EVERY = ("step", "kappa")

_TABLE: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            "ce", "Baseline", "cross-entropy, the baseline", {},
            with_loss(_cross_entropy),
            text=True,
        ),
        Method(
            "lsr", "LSR", "label smoothing: CE with targets (1-a) p + a u (W 5, 6)",
            {"alpha": 0.1},  # also P's LS on GLUE (section 4.2)
            with_loss(lambda c, losses: losses.LSRLoss(alpha=c.alpha)),
            text=True,
        ),
        Method(
            "lsrkd", "LsrKD", "(1-a) CE + a t KL(u || q(t)), a uniform teacher (W 10)",
            {"alpha": 0.1, "temperature": 3.0},
            with_loss(lambda c, losses: losses.LsrKDLoss(alpha=c.alpha, temperature=c.temperature)),
        ),
        Method(
            "lsrkd_tc", "LsrKD-TC",
            "lsrkd with Teacher Correction: the teacher gives the true class gamma (W 11, 12)",
            {"alpha": 0.1, "temperature": 3.0, "gamma": PerDataset(cifar100=0.025, other=0.25)},
            with_loss(lambda c, losses: losses.LsrKDLoss(alpha=c.alpha, temperature=c.temperature, gamma=c.gamma)),
        ),
        Method(
            "mrkd", "MrKD-{copies}",
            "memory-replay KD from n copies of the model, refreshed every kappa epochs (W 13, 14)",
            {"alpha": _MRKD_ALPHA, "temperature": 3.0, "copies": 3, "kappa": _KAPPA,
             "initial_weights_teach": False},
            _memory_replay, column="mrkd{copies}", ablations=("initial_weights_teach",),
            teachers=True,
        ),
        Method(
            "mrkd_tc", "MrKD-{copies}-TC", "mrkd with Teacher Correction of every copy (W 16, 17)",
            {"alpha": _MRKD_ALPHA, "temperature": 3.0, "gamma": 0.25, "copies": 3, "kappa": _KAPPA,
             "initial_weights_teach": False},
            _memory_replay, column="mrkd{copies}_tc", ablations=("initial_weights_teach",),
            teachers=True,
        ),
        Method(
            "mrkd_ema", "MrKD-{copies}-EMA",
            "mrkd with a weight-averaged teacher (an EMA of the student's weights and BatchNorm "
            "statistics), alone (copies 0) or beside n copies (W's conclusion; Mean Teacher)",
            # The average's mean age (its horizon) is kappa by default: as old as a copy at its
            # refresh, and in proportion to the run as kappa is (docs/METHODS.md).
            {"alpha": _MRKD_ALPHA, "temperature": 3.0, "copies": 0, "kappa": _KAPPA,
             "ema_horizon": _KAPPA, "ema_every": "step", "initial_weights_teach": False},
            _memory_replay, column="mrkd{copies}_ema", ablations=("initial_weights_teach",),
            teachers=True,
        ),
        Method(
            "mrkd_ema_tc", "MrKD-{copies}-EMA-TC", "mrkd_ema with Teacher Correction of every teacher",
            {"alpha": _MRKD_ALPHA, "temperature": 3.0, "gamma": 0.25, "copies": 0, "kappa": _KAPPA,
             "ema_horizon": _KAPPA, "ema_every": "step", "initial_weights_teach": False},
            _memory_replay, column="mrkd{copies}_ema_tc", ablations=("initial_weights_teach",),
            teachers=True,
        ),
        Method(
            "pseudo_kd", "Pseudo-KD",
            "label smoothing by the student's own P* = softmax(z a / b) (P 5, 10-13)",
            # P's Appendix C: CIFAR, and each GLUE task (its batch size and lr: flags/).
            {"alpha": OnGlue(image=0.2, glue=0.1),
             "beta": OnGlue(image=PerDataset(cifar100=1.5, other=2.5), glue=_PSEUDO_KD_GLUE_BETA)},
            with_loss(lambda c, losses: losses.PseudoKDLoss(alpha=c.alpha, beta=c.beta)),
            text=True,
        ),
        Method(
            "tf_reg", "TF-reg",
            "KD from a hand-made teacher, as the reference code computes it (Yuan et al. 2020)",
            # ResNet-18's settings in the reference code; m = K keeps its KL weight a m / K
            # on CIFAR-10 (docs/METHODS.md, TF-reg).
            {"alpha": 0.1, "temperature": 20.0, "multiplier": PerDataset(cifar100=100.0, other=10.0),
             "correct_probability": 0.99, "tf_reg_form": "code"},
            with_loss(lambda c, losses: losses.TFRegLoss(
                alpha=c.alpha, temperature=c.temperature, multiplier=c.multiplier,
                correct_probability=c.correct_probability, form=c.tf_reg_form,
            )),
        ),
        Method(
            "cs_kd", "CS-KD",
            "class-wise self-KD: CE + lam t^2 KL to the student's own prediction on a "
            "same-class partner (Yun et al. 2020)",
            # The reference code's CIFAR defaults (train.py --temp 4, --lamda 1).
            {"temperature": 4.0, "lam": 1.0},
            _class_wise, inputs="pairs",
        ),
        Method(
            "pskd", "PS-KD",
            "progressive self-KD: targets (1-a_t) y + a_t (last epoch's prediction), a_t = alpha t/T "
            "(Kim et al. 2021)",
            # alpha is alpha_T, the reference's CIFAR-100 value (docs/METHODS.md, PS-KD).
            {"alpha": 0.8},
            _progressive, inputs="indices",
        ),
        Method(
            "beta_ls", "Beta-LS",
            "Beta smoothing: the label weighted by a Beta(beta, 1) draw matched to a weight-averaged "
            "teacher's confidence (Zhang & Sabuncu 2020)",
            # The reference code's defaults (train_smoothing.py --alpha 0.6 --beta 3 --lamda 0.999).
            {"alpha": 0.6, "beta": 3.0, "ema_decay": 0.999},
            _beta_smoothing,
        ),
        Method(
            "kr_ls", "KR-LS",
            "Knowledge Refinery: CE + a KL(p_res || softmax(S_y)_res) over the non-label classes, "
            "S a K x K matrix learned beside the network (Ding et al. 2021, Algorithm 1)",
            # alpha = 1: the unweighted sum of Algorithm 1's two losses (docs/METHODS.md, KR-LS).
            {"alpha": 1.0},
            _knowledge_refinery,
        ),
        Method(
            "kd", "KD", "KD from a fixed pre-trained --teacher (Hinton et al.; W 4)",
            # On GLUE, from P's grid {0.1, 0.2, 0.5} x {1, 5, 10} (P does not give KD's best):
            # alpha 0.5, the most weight on a much stronger teacher (RoBERTa-large, 24 layers)
            # the grid allows, nearest the image side's 0.9; temperature 5, its middle.
            {"alpha": OnGlue(image=0.9, glue=0.5), "temperature": OnGlue(image=4.0, glue=5.0),
             "teacher": Required("a .keras file of a trained model (text: or a preset directory)")},
            _distillation, teachers=True, text=True,
        ),
    )
}


# --------------------------------------------------------------------------
# Reading the table
# --------------------------------------------------------------------------


def names() -> list[str]:
    """The method names, in the papers' order (the report's columns)."""
    return list(_TABLE)


def get(name: str) -> Method:
    """The entry of ``name``; ``ValueError`` naming the valid names otherwise."""
    if name not in _TABLE:
        raise ValueError(f"Unknown method {name!r}; valid names: {', '.join(_TABLE)}.")
    return _TABLE[name]


def hyperparameters() -> tuple[str, ...]:
    """Every hyper-parameter some method reads (each a ``train.py`` flag and config field)."""
    return tuple(dict.fromkeys(name for method in _TABLE.values() for name in method.parameters))


def parse_name(text: str) -> tuple[str, dict[str, int]]:
    """A method or column name -> ``(method, fixed hyper-parameters)``; ``ValueError`` otherwise.

    Example:
        >>> parse_name("lsr"), parse_name("mrkd1"), parse_name("mrkd-3")
        (('lsr', {}), ('mrkd', {'copies': 1}), ('mrkd', {'copies': 3}))
    """
    if text in _TABLE:
        return text, {}
    for method in _TABLE.values():
        pattern = method.column_pattern()
        match = pattern.match(text) if pattern else None
        if match:
            if int(match.group(1)) < method.fewest_copies():
                raise ValueError(f"{text!r} needs at least {method.fewest_copies()} copy.")
            return method.name, {"copies": int(match.group(1))}
    templates = counted_columns()
    raise ValueError(
        f"{text!r} is not a method; use one of {', '.join(_TABLE)}, or {' / '.join(templates)} "
        f"for N copies (e.g. {', '.join(t.replace('<N>', '3') for t in templates)})."
    )


def counted_columns() -> list[str]:
    """The column names that carry the number of copies: ``['mrkd<N>', 'mrkd<N>_tc']``."""
    return [m.column.replace("{copies}", "<N>") for m in _TABLE.values() if m.column]


def column_name(method: str, copies: int | None = None) -> str:
    """The canonical short spelling: ``column_name("mrkd_tc", 3) == "mrkd3_tc"``."""
    entry = get(method)
    if copies is None or (copies == 0 and entry.fewest_copies() == 0):
        return method
    if not entry.column:
        raise ValueError(f"{method!r} has no memory copies.")
    return entry.column.format(copies=copies)


def canonical(text: str) -> str:
    """The canonical column spelling of a method or column name: ``canonical("mrkd-3") == "mrkd3"``."""
    method, fixed = parse_name(text)
    return column_name(method, **fixed)


def train_flags(text: str) -> list[str]:
    """The ``train.py`` flags of a method or column name (``mrkd3`` -> ``--method=mrkd --copies=3``)."""
    method, fixed = parse_name(text)
    return [f"--method={method}", *(f"--{key}={value}" for key, value in fixed.items())]


def method_help() -> str:
    """``--method``'s help: every method with its one line."""
    return "Training method: " + "; ".join(f"{m.name}: {m.help}" for m in _TABLE.values()) + "."


def flag_help(parameter: str, text: str) -> str:
    """A hyper-parameter flag's help: ``text`` plus the methods that read it and their defaults.

    Example:
        >>> flag_help("lam", "CS-KD's lambda >= 0.")
        "CS-KD's lambda >= 0. Used by (default): cs_kd (1.0)."
    """
    uses = [f"{m.name} ({_show(m.parameters[parameter])})" for m in _TABLE.values()
            if parameter in m.parameters]
    return f"{text} Used by (default): {', '.join(uses)}."


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
