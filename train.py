#!/usr/bin/env python
r"""Train one configuration of the papers' experiments and write results.json.

    python train.py --method=mrkd_tc --gamma=0.25 --model=resnet56 --dataset=cifar100 \
        --data_dir=/path/to/data --output_dir=runs/resnet56_mrkd3_tc

A GLUE task (P section 4.2) takes a text model, AdamW and the linear warm-up schedule:

    python train.py --method=pseudo_kd --dataset=rte --model=distil_roberta_base_en \
        --batch_size=16 --lr=2e-5 --data_dir=/path/to/glue --output_dir=runs/rte_pseudo_kd

Presets live in flags/ (``python train.py --flagfile=flags/quickstart.flags``).
Hyper-parameters left unset take the papers' defaults for the method and
dataset (keras_softkd/methods.py, the method table). A run started again with the same
--output_dir resumes from its last epoch.
"""

import dataclasses
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

# Nothing above keras_softkd.experiment imports Keras or TensorFlow: flags and the
# configuration are checked first, and a mistake is refused in about a second.
from keras_softkd import methods  # noqa: E402
from keras_softkd._signals import StopSignals, describe, exit_status  # noqa: E402
from keras_softkd.choices import AUTO, PRECISIONS, TEACHER_PRECISIONS, TF_REG_FORMS  # noqa: E402
from keras_softkd.config import (  # noqa: E402
    DATASETS,
    LR_SCHEDULES,
    METHODS,
    OPTIMIZERS,
    STRATEGIES,
    ExperimentConfig,
    UsageError,
)

flags.DEFINE_enum("method", "ce", METHODS, methods.method_help())
flags.DEFINE_enum("dataset", "cifar10", DATASETS,
                  "Dataset: an image dataset, or a GLUE task (P section 4.2: text models, AdamW).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir, or a folder of local files "
                    "(<dataset>_train.npz/<dataset>_test.npz, CIFAR python/binary archives, "
                    "or train|valid|test/<class>/*.png; GLUE: <Task>/train.tsv, dev.tsv... "
                    "or glue/<Task>/..., the official layout).")
flags.DEFINE_string("model", "resnet20", "Network (keras_softkd.models.names()); on a GLUE task a "
                    "text model: distil_roberta_base_en, bert_tiny_scratch, a KerasHub preset or "
                    "a local preset directory.")
# Unset: the protocol's value for the dataset's kind (keras_softkd.config.PROTOCOL_DEFAULTS).
flags.DEFINE_integer("epochs", None, "Training epochs (default 200; GLUE 10).")
flags.DEFINE_integer("batch_size", None,
                     "Global batch size, split across replicas (default 128; GLUE 32).")
flags.DEFINE_float("lr", None, "Initial (peak) learning rate (default 0.1; GLUE 2e-5).")
flags.DEFINE_enum("lr_schedule", None, LR_SCHEDULES,
                  "cosine (default): to 1e-4 (MrKD paper); step: /5 at 30%, 60%, 80% (Pseudo-KD "
                  "paper); linear (GLUE default): warm-up over --warmup_fraction, then to 0.")
flags.DEFINE_float("warmup_fraction", None,
                   "--lr_schedule=linear: the share of the steps of linear warm-up (default 0.06, "
                   "RoBERTa's GLUE recipe).")
flags.DEFINE_enum("optimizer", None, OPTIMIZERS,
                  "sgd (default): PyTorch's SGD; adamw (GLUE default): PyTorch's AdamW defaults, "
                  "betas 0.9/0.999, eps 1e-8, decoupled weight decay.")
flags.DEFINE_float("weight_decay", None, "Weight decay: L2 added to the gradient as PyTorch's SGD "
                   "does (default 5e-4), or AdamW's decoupled decay (GLUE default 0.01).")
flags.DEFINE_float("momentum", None, "SGD momentum (default 0.9; --optimizer=sgd only).")
flags.DEFINE_integer("sequence_length", None,
                     "GLUE: tokens per example (pairs: both sentences), default 128.")
# The methods' hyper-parameters (keras_softkd.methods says which method reads which, and
# its default); tests/test_methods.py checks that every one has its flag here.
flags.DEFINE_float("alpha", None, methods.flag_help("alpha", "Method weight alpha in [0, 1]."))
flags.DEFINE_float("temperature", None, methods.flag_help("temperature", "Temperature > 0."))
flags.DEFINE_float("gamma", None, methods.flag_help("gamma", "Teacher correction in [0, 1]."))
flags.DEFINE_float("beta", None, methods.flag_help(
    "beta", "Pseudo-KD's beta > 0; Beta-LS's prior Beta(beta, 1) of the label's weight."))
flags.DEFINE_integer("copies", None, methods.flag_help(
    "copies", "MrKD memory copies n >= 1 (>= 0 beside a weight average)."))
flags.DEFINE_float("kappa", None, methods.flag_help(
    "kappa", "MrKD refresh interval in epochs (fractions allowed; epochs/8 is the paper's 25 "
    "of 200)."))
flags.DEFINE_bool("initial_weights_teach", None, methods.flag_help(
    "initial_weights_teach", "MrKD ablation: every memory copy teaches from step 1, the initial "
    "weights included (Algorithm 1 read literally); false: a copy teaches once refreshed."))
flags.DEFINE_string("teacher", None, methods.flag_help("teacher", "A trained .keras model."))
flags.DEFINE_float("multiplier", None, methods.flag_help(
    "multiplier", "TF-reg's per-network weight m > 0 of its KL term (the reference code's)."))
flags.DEFINE_float("correct_probability", None, methods.flag_help(
    "correct_probability", "TF-reg's hand-made teacher: probability of the true class."))
flags.DEFINE_enum("tf_reg_form", None, list(TF_REG_FORMS), methods.flag_help(
    "tf_reg_form", "TF-reg: the reference code's loss, or the paper's Eq. 9 (docs/METHODS.md)."))
flags.DEFINE_float("lam", None, methods.flag_help(
    "lam", "CS-KD's weight lambda >= 0 of its KL term (the reference code's --lamda)."))
flags.DEFINE_float("ema_decay", None, methods.flag_help(
    "ema_decay", "Beta-LS's lambda in [0, 1): the per-step decay of its teacher, a weight average "
    "of the student (Mean Teacher's warm-up min(1 - 1/(g+1), lambda))."))
flags.DEFINE_float("ema_horizon", None, methods.flag_help(
    "ema_horizon", "MrKD's weight average: its mean age in epochs (decay = 1 - update interval / "
    "horizon)."))
flags.DEFINE_enum("ema_every", None, list(methods.EMA_EVERY), methods.flag_help(
    "ema_every", "When MrKD's weight average is updated: every step, or every kappa."))
flags.DEFINE_integer("seed", 0, "Random seed (data order, augmentation, initialisation).")
flags.DEFINE_string("output_dir", "runs/{method}/seed{seed}",
                    "Where results, checkpoints and logs go; {method} and {seed} are filled in.")
flags.DEFINE_enum("strategy", "auto", STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_enum("precision", "auto", [*PRECISIONS, AUTO],
                  "Keras dtype policy of training: auto (default): mixed_bfloat16 where the "
                  "hardware computes bfloat16 natively, else float32; or float32, mixed_float16, "
                  "mixed_bfloat16 (float32 weights, 16-bit compute; logits, losses and metrics in "
                  "float32).")
flags.DEFINE_enum("teacher_precision", AUTO, [*TEACHER_PRECISIONS, AUTO],
                  "Teachers running without gradients (MrKD's memories, KD's --teacher): in the "
                  "student's precision (same), or through a bfloat16 copy of their layers, "
                  "float32 logits (bfloat16); auto (default): bfloat16 where the hardware computes "
                  "bfloat16 natively, the method has such teachers, the dataset is an image one "
                  "and the student trains in float32, else same. results.json records the value "
                  "used and why; a resumed run keeps the values it started with.")
flags.DEFINE_bool("mixed_precision", None,
                  "Deprecated: --mixed_precision is --precision=mixed_float16 (and "
                  "--nomixed_precision --precision=float32).")
flags.DEFINE_integer("train_examples", None, "Use only the first N shuffled training examples.")
flags.DEFINE_float("validation_fraction", 0.0,
                   "Hold out this fraction of the training set for per-epoch validation "
                   "(0: evaluate on the test set each epoch).")
flags.DEFINE_integer("eval_examples", None,
                     "Image datasets: evaluate each epoch on this many examples of the held-out or "
                     "test split (a seeded subset) for a quicker run; the final evaluation, "
                     "results.json's, is always on the whole test set.")
flags.DEFINE_bool("keep_best", False,
                  "Also save the student of the epoch with the best held-out accuracy "
                  "(model_best.keras; needs --validation_fraction > 0).")
flags.DEFINE_bool("overwrite", False, "Replace a finished run in --output_dir.")
flags.DEFINE_bool("dry_run", False,
                  "Check the flags, print the resolved configuration (the papers' defaults "
                  "filled in) as JSON and exit; nothing is read or written.")

FLAGS = flags.FLAGS


def config_from_flags() -> ExperimentConfig:
    """The flags of the same names as ``ExperimentConfig``'s fields (one flag each), and the
    deprecated ``--mixed_precision`` folded into ``--precision``."""
    names = [field.name for field in dataclasses.fields(ExperimentConfig)]
    values = {name: FLAGS[name].value for name in names}
    mixed = FLAGS["mixed_precision"].value
    if mixed is not None:
        meant = "mixed_float16" if mixed else "float32"
        if FLAGS["precision"].present and values["precision"] != meant:
            given = "--mixed_precision" if mixed else "--nomixed_precision"
            raise UsageError(
                f"{given} (deprecated) means --precision={meant}, but --precision="
                f"{values['precision']} is given too; give --precision alone."
            )
        print(f"train.py: --mixed_precision is deprecated; use --precision={meant}.", file=sys.stderr)
        values["precision"] = meant
    return ExperimentConfig(**values)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Ctrl-C and SIGTERM end the run with one line and 130 / 143 (keras_softkd/_signals.py).
    run = {}  # the run's config once checked: what the interrupted line names
    with StopSignals(raise_first=True) as stop:
        try:
            _train(run)
        except KeyboardInterrupt as interrupt:
            stop.caught()
            signum = getattr(interrupt, "signum", signal.SIGINT)  # a bare KeyboardInterrupt
            tty = sys.stderr.isatty()  # after the terminal's ^C or a progress bar
            print(("\n" if tty else "") + interrupted_line(signum, run.get("config")),
                  file=sys.stderr, flush=True)
            sys.exit(exit_status(signum))


def _train(run: dict) -> None:
    try:
        config = config_from_flags()
        # Every check of the configuration runs before Keras is imported; a valid one
        # then imports it to ask the hardware about --precision=auto.
        resolved = config.resolved()
        if FLAGS.dry_run:
            print(json.dumps(dataclasses.asdict(resolved), indent=2))
            return
        run["config"] = resolved
        from keras_softkd import experiment

        results = experiment.run(config)
    except UsageError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    where = f"{results['output_dir']}/results.json"
    if results["diverged"]:
        print(f"the run diverged (non-finite logits); recorded in {where}")
        return
    glue = (
        f"dev {results['glue_metric']} {results['glue_score']:.2f} | "
        if results.get("glue_score") is not None else ""
    )
    print(
        f"{glue}test error {100 * results['test_error']:.2f}% | NLL {results['test_nll']:.4f} | "
        f"ECE {100 * results['test_ece']:.2f}% | {results['images_per_second'] or 0:.0f} "
        f"{'examples' if glue else 'images'}/s | "
        f"{where}"
    )


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a flag error as one line and exit status 2 (a usage error)."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        message = " ".join(str(error).split())
        print(f"train.py: error: {message} (python train.py --helpshort lists the flags)",
              file=sys.stderr)
        sys.exit(2)


def interrupted_line(signum: int, config) -> str:
    """What an interrupted run says: the signal, the epoch the last checkpoint in ``config``'s
    folder holds, how to go on (the same command resumes there)."""
    what = f"train.py: interrupted by {describe(signum)}"
    if config is None:  # stopped before the run's folder was known (importing, checking)
        return f"{what} before training began; run the same command to start it."
    from keras_softkd.experiment.lifecycle import checkpoint_epoch

    epoch = checkpoint_epoch(config.output_dir)
    if epoch:
        return (f"{what}; the last checkpoint in {config.output_dir} holds epoch {epoch} of "
                f"{config.epochs}: run the same command to resume from there.")
    return (f"{what}; no checkpoint yet in {config.output_dir}: the run starts again from "
            "epoch 1 (run the same command).")


def _help_requested(argv) -> bool:
    """absl answers --help with exit status 1; asked-for help is a success."""
    return any(arg in ("-h", "-?", "--help", "--helpshort", "--helpfull") for arg in argv[1:])


if __name__ == "__main__":
    if _help_requested(sys.argv):
        app.usage(shorthelp="--helpfull" not in sys.argv, writeto_stdout=True, exitcode=0)
    app.run(main, flags_parser=parse_flags)
