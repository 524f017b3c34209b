"""Writes one absl flagfile per cell of the papers' tables (run from the repository root).

    python flags/make_flagfiles.py

W = "Extending Label Smoothing Regularization with Self-Knowledge Distillation"
(Table 1: CIFAR-100; Table 2: CIFAR-10 and CINIC-10): 200 epochs, cosine to
1e-4, batch 128, columns Baseline, LSR, LsrKD, LsrKD-TC, MrKD-1, MrKD-3,
MrKD-3-TC. P = "Pseudo Knowledge Distillation" (Table 1, CIFAR-100 and
CIFAR-10): 200 epochs, lr /5 at 60/120/160, batch 128 (64 for ResNeXt-29,
ResNet-50, ResNet-101), columns Base, LS, KD-Shuffle, KD-29, Pseudo-KD; its
Table 2 (MobileNetV2, ResNet-18, ResNet-50) adds the teacher-free baselines
(here: CS-KD, TF-reg, PS-KD and KR-LS) beside Base, KD-29, LS and Pseudo-KD, the same runs: both
tables' cells write to ``runs/p/<dataset>/<model>/<column>/``, so a cell in
both is run once (``python -m keras_softkd.report runs/p --layout=p_table2``).
Hyper-parameters not written here are the papers' defaults (config.py).
Output directories hold ``{seed}``, filled from --seed, so seeds never collide.

P's protocol details (section 4.1):

* "The validation set is made up of 10% of the training data": every P cell
  trains on 90% (``--validation_fraction=0.1``, a seeded random split) and
  keeps the student of its best held-out accuracy (``--keep_best``,
  ``model_best.keras``); the test set is only used for the reported figures.
* "All teacher models are trained from scratch and picked based on their best
  accuracy": the KD columns distil from the ``ce`` run's ``model_best.keras``
  (seed 0), chosen on the held-out split.
* KD temperature: P grid-searched {5, 10, 20, 40} (and alpha over {0.1, 0.2,
  0.5, 0.9}) but reports only Pseudo-KD's chosen values (Appendix C). The KD
  cells use ``--temperature=5``, the grid's value nearest the usual CIFAR KD
  temperature 4 (Hinton et al.; this package's ``kd`` default, outside P's
  grid), with ``--alpha=0.9`` from P's alpha grid; a grid over P's pool is
  ``python -m keras_softkd.grid --methods=kd:temperature=5,kd:temperature=10,...``.

P's Table 3 (GLUE dev, section 4.2), ``flags/p_table3/<task>/<column>.flags``:
DistilRoBERTa fine-tuned with Base (ce), LS, KD from a fine-tuned RoBERTa-large
(``teacher.flags``: ce on ``roberta_large_en``, run first), and Pseudo-KD, each
with P's Appendix C batch size and learning rate for the task; the rest are the
GLUE defaults (AdamW, linear warm-up, Pseudo-KD's beta per task, KD alpha 0.5, t 5;
docs/METHODS.md, "GLUE"); all under ``runs/p_glue/<task>/<column>/``, laid out as
P's Table 3 by ``python -m keras_softkd.report runs/p_glue --layout=p_table3``.
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).parent
sys.path.insert(0, str(ROOT.parent))  # this checkout's keras_softkd, installed or not

from keras_softkd.methods import train_flags  # noqa: E402

# Column names as the method table spells them (keras_softkd.methods): mrkd3_tc is
# --method=mrkd_tc --copies=3.
W_COLUMNS = {
    column: train_flags(column)
    for column in ("ce", "lsr", "lsrkd", "lsrkd_tc", "mrkd1", "mrkd3", "mrkd3_tc")
}
W_TABLES = {
    ("w_table1", "cifar100"): [
        "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "preresnet110", "resnet164",
        "preresnet164", "wrn40_4", "wrn16_8", "wrn28_10", "resnext29_8x64d",
    ],
    ("w_table2", "cifar10"): ["resnet20", "resnet32", "resnet56", "resnet164", "wrn16_8"],
    ("w_table2", "cinic10"): ["resnet20", "resnet32", "resnet56", "resnet164", "wrn16_8"],
}
P_MODELS = ["shufflenetv2", "mobilenetv2", "resnet18", "resnext29_8x64d", "resnet50", "resnet101"]
P_SMALL_BATCH = {"resnext29_8x64d", "resnet50", "resnet101"}
P_KD = ["--alpha=0.9", "--temperature=5"]  # from P's grids; see the docstring
P_TABLE2_MODELS = ["mobilenetv2", "resnet18", "resnet50"]
# TF-reg as the reference code sets it per network on CIFAR-100 (reg_alpha, reg_temperature,
# multiplier; docs/METHODS.md, TF-reg): ResNet-50 has none there and takes ResNet-18's; on
# CIFAR-10 the multiplier is scaled by 10/100 to keep the KL weight alpha m / K.
TF_REG = {"mobilenetv2": (0.95, 40, 1.0), "resnet18": (0.1, 20, 100.0), "resnet50": (0.1, 20, 100.0)}


# P's Appendix C: (batch size, learning rate) per GLUE task.
P_GLUE = {"cola": (32, "1e-5"), "rte": (16, "2e-5"), "sst2": (64, "2e-5"), "mrpc": (8, "2e-5"),
          "qnli": (64, "2e-5"), "qqp": (32, "2e-5"), "mnli": (32, "2e-5")}


def write(path: pathlib.Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    count = 0
    for (table, dataset), models in W_TABLES.items():
        for model in models:
            for column, method_flags in W_COLUMNS.items():
                write(ROOT / table / dataset / f"{model}_{column}.flags", [
                    f"# {table.upper().replace('_', ' ')} ({dataset}), {model}, column {column}",
                    f"--dataset={dataset}", f"--model={model}", *method_flags,
                    "--epochs=200", "--batch_size=128", "--lr=0.1", "--lr_schedule=cosine",
                    "--weight_decay=5e-4",
                    f"--output_dir=runs/{table}/{dataset}/{model}/{column}/seed{{seed}}",
                ])
                count += 1
    for dataset in ("cifar100", "cifar10"):
        for model in P_MODELS:
            for column, method_flags in p_columns(dataset, model, table2=False).items():
                write_p_cell("p_table1", dataset, model, column, method_flags)
                count += 1
        for model in P_TABLE2_MODELS:
            for column, method_flags in p_columns(dataset, model, table2=True).items():
                write_p_cell("p_table2", dataset, model, column, method_flags)
                count += 1
    for task, (batch, lr) in P_GLUE.items():
        runs = f"runs/p_glue/{task}"
        columns = {
            "teacher": ["--model=roberta_large_en", *train_flags("ce")],
            "ce": ["--model=distil_roberta_base_en", *train_flags("ce")],
            "lsr": ["--model=distil_roberta_base_en", *train_flags("lsr")],
            "kd": ["--model=distil_roberta_base_en", *train_flags("kd"),
                   f"--teacher={runs}/teacher/seed0/model.keras"],
            "pseudo_kd": ["--model=distil_roberta_base_en", *train_flags("pseudo_kd")],
        }
        for column, flags in columns.items():
            write(ROOT / "p_table3" / task / f"{column}.flags", [
                f"# P TABLE 3 (GLUE dev, {task}), column {column}",
                f"--dataset={task}", *flags, f"--batch_size={batch}", f"--lr={lr}",
                f"--output_dir={runs}/{column}/seed{{seed}}",
            ])
            count += 1
    print(f"wrote {count} flagfiles")


def p_columns(dataset: str, model: str, table2: bool) -> dict[str, list[str]]:
    """P's columns for one network: Table 1's, or Table 2's (the same runs where they share one)."""
    def teacher(network):
        return f"--teacher=runs/p/{dataset}/{network}/ce/seed0/model_best.keras"

    columns = {
        "ce": train_flags("ce"),
        "lsr": train_flags("lsr"),
        "kd_shufflenetv2": [*train_flags("kd"), *P_KD, teacher("shufflenetv2")],
        "kd_resnext29": [*train_flags("kd"), *P_KD, teacher("resnext29_8x64d")],
        "pseudo_kd": train_flags("pseudo_kd"),
    }
    if not table2:
        return columns
    alpha, temperature, multiplier = TF_REG[model]
    multiplier *= 0.1 if dataset == "cifar10" else 1.0
    del columns["kd_shufflenetv2"]  # Table 2 has KD-29 only
    columns["tf_reg"] = [*train_flags("tf_reg"), f"--alpha={alpha:g}",
                         f"--temperature={temperature:g}", f"--multiplier={multiplier:g}"]
    columns["cs_kd"] = train_flags("cs_kd")  # the reference's T = 4, lambda = 1 (the defaults)
    columns["pskd"] = train_flags("pskd")  # alpha_T = 0.8, the reference's (the default)
    columns["beta_ls"] = train_flags("beta_ls")  # the reference's a 0.6, beta 3, lamda 0.999
    columns["kr_ls"] = train_flags("kr_ls")  # alpha = 1 (the default; docs/METHODS.md, KR-LS)
    return columns


def write_p_cell(table: str, dataset: str, model: str, column: str, method_flags: list[str]):
    """One cell of P's protocol; both tables' runs share runs/p/ (a cell in both is one run)."""
    batch = 64 if model in P_SMALL_BATCH else 128
    write(ROOT / table / dataset / f"{model}_{column}.flags", [
        f"# P TABLE {table[-1]} ({dataset}), {model}, column {column}",
        f"--dataset={dataset}", f"--model={model}", *method_flags,
        "--epochs=200", f"--batch_size={batch}", "--lr=0.1", "--lr_schedule=step",
        "--weight_decay=5e-4", "--validation_fraction=0.1", "--keep_best",
        f"--output_dir=runs/p/{dataset}/{model}/{column}/seed{{seed}}",
    ])


if __name__ == "__main__":
    main()
