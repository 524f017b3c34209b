"""keras_softkd.report on fake run directories: numbers, order, missing cells, errors, plot, CLI."""

import csv
import doctest
import json
import pathlib
import re
import zlib

import numpy as np
import pytest

from keras_softkd import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

HYPERPARAMETERS = {
    "alpha": 0.1, "temperature": 3.0, "gamma": 0.25, "beta": None, "copies": 3, "kappa": 2.5,
    "lr": 0.1, "lr_schedule": "cosine", "weight_decay": 0.0005, "batch_size": 128,
    "train_examples": None,
}


def make_run(root, name, method="ce", seed=0, dataset="cifar100", model="resnet56",
             epochs=4, completed=True, history=True, **overrides):
    """A run directory like experiment.run writes; returns its results dict."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(zlib.crc32(f"{name}-{seed}".encode()))
    hyperparameters = dict(HYPERPARAMETERS)
    for key in list(overrides):
        if key in hyperparameters:
            hyperparameters[key] = overrides.pop(key)
    results = {
        "method": method, "dataset": dataset, "model": model, "seed": seed, "epochs": epochs,
        "hyperparameters": hyperparameters,
        "test_error": float(rng.uniform(0.05, 0.3)),
        "test_top5_error": float(rng.uniform(0.0, 0.05)),
        "test_nll": float(rng.uniform(0.2, 1.5)),
        "test_ece": float(rng.uniform(0.0, 0.1)),
        "images_per_second": 640.0, "wall_seconds": 12.5, "completed": completed,
        "versions": {"keras_softkd": "0.1.0", "keras": "3.15.1"},
    }
    results.update(overrides)
    (run_dir / "results.json").write_text(json.dumps(results))
    if history:
        with open(run_dir / "history.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "accuracy", "learning_rate", "loss", "val_accuracy", "val_loss"])
            for epoch in range(epochs):
                writer.writerow([epoch, 0.5, 0.1, 1.0, rng.uniform(0.5, 0.9), 1.0])
    return results


@pytest.fixture
def sweep(tmp_path):
    """2 methods x 3 seeds on CIFAR-100/ResNet-56, created out of display order,
    ce only on CIFAR-10/ResNet-110 and ResNet-20, and one incomplete run."""
    runs = {}
    for seed in range(3):
        runs["mrkd_tc", seed] = make_run(tmp_path / "a", f"mrkd_tc_{seed}", "mrkd_tc", seed)
        runs["ce", seed] = make_run(tmp_path / "b", f"ce_{seed}", "ce", seed)
    runs["ce10_110"] = make_run(tmp_path / "a", "c10_110", "ce", 0, "cifar10", "resnet110")
    runs["ce10_20"] = make_run(tmp_path / "a", "c10_20", "ce", 0, "cifar10", "resnet20")
    make_run(tmp_path / "b", "unfinished", "mrkd_tc", 5, completed=False, history=False,
             test_error=None)
    return tmp_path, runs


def parse_table(text):
    lines = [line for line in text.strip().splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert set("".join(rows[1])) <= {"-", " "}
    return rows[0], rows[2:]


def expected_cell(values, scale=100.0, decimals=2):
    values = np.asarray(values) * scale
    mean = f"{values.mean():.{decimals}f}"
    if len(values) == 1:
        return f"{mean} (1)"
    return f"{mean} ± {values.std(ddof=1):.{decimals}f} ({len(values)})"


# --------------------------------------------------------------------------
# collect
# --------------------------------------------------------------------------


def test_collect_finds_runs_recursively_and_skips_incomplete(sweep):
    root, _ = sweep
    runs = report.collect([root])
    assert len(runs) == 8
    assert len(runs.skipped) == 1 and runs.skipped[0].parent.name == "unfinished"
    assert all((pathlib.Path(r["run_dir"]) / "results.json").is_file() for r in runs)
    # The same run reached twice (a parent and a child) counts once.
    assert len(report.collect([root, root / "a", root / "a" / "c10_20" / "results.json"])) == 8


def test_collect_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        report.collect([tmp_path / "nowhere"])


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"method": "ce", "completed": tru', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"method": "ce", "dataset": "cifar10", "model": "resnet20", "seed": 0}', "`completed`"),
        ('{"method": "ce", "dataset": "cifar10", "model": "resnet20", "completed": true}', "`seed`"),
        ('{"method": 3, "dataset": "c", "model": "m", "seed": 0, "completed": true}', "`method`"),
    ],
)
def test_collect_malformed_results_name_the_file(tmp_path, content, match):
    make_run(tmp_path, "good")
    bad = tmp_path / "deep" / "bad_run" / "results.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        report.collect([tmp_path])
    assert str(bad.resolve()) in str(info.value)


# --------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------


def test_table_numbers_order_and_missing_cells(sweep):
    root, made = sweep
    header, rows = parse_table(report.table(report.collect([root])))
    assert header == ["dataset", "model", "Baseline", "MrKD-3-TC"]
    assert [row[:2] for row in rows] == [
        ["cifar10", "resnet20"], ["cifar10", "resnet110"], ["cifar100", "resnet56"]
    ]
    ce = [made["ce", s]["test_error"] for s in range(3)]
    mrkd_tc = [made["mrkd_tc", s]["test_error"] for s in range(3)]
    assert rows[2][2:] == [expected_cell(ce), expected_cell(mrkd_tc)]
    assert rows[0][2:] == [expected_cell([made["ce10_20"]["test_error"]]), report.MISSING]
    assert rows[1][3] == report.MISSING


@pytest.mark.parametrize("metric, scale, decimals", [
    ("test_nll", 1.0, 3), ("test_ece", 100.0, 2), ("test_top5_error", 100.0, 2),
])
def test_table_other_metrics(sweep, metric, scale, decimals):
    root, made = sweep
    _, rows = parse_table(report.table(report.collect([root]), metric=metric))
    values = [made["ce", s][metric] for s in range(3)]
    assert rows[2][2] == expected_cell(values, scale, decimals)


def test_table_column_labels_in_paper_order(tmp_path):
    methods = [("kd", None), ("pseudo_kd", None), ("mrkd_tc", 3), ("mrkd", 3), ("mrkd", 1),
               ("lsrkd_tc", None), ("lsrkd", None), ("lsr", None), ("ce", None),
               ("my_new_method", None)]
    for i, (method, copies) in enumerate(methods):
        make_run(tmp_path, f"run{i}", method, copies=copies if copies else 3)
    header, _ = parse_table(report.table(report.collect([tmp_path])))
    assert header[2:] == ["Baseline", "LSR", "LsrKD", "LsrKD-TC", "MrKD-1", "MrKD-3",
                          "MrKD-3-TC", "Pseudo-KD", "KD", "my_new_method"]


def test_null_metric_does_not_count(tmp_path):
    make_run(tmp_path, "k4_a", seed=0, test_top5_error=None, test_error=0.2)
    make_run(tmp_path, "k4_b", seed=1, test_top5_error=None, test_error=0.4)
    runs = report.collect([tmp_path])
    assert parse_table(report.table(runs, "test_top5_error"))[1][0][2] == report.MISSING
    assert parse_table(report.table(runs))[1][0][2] == expected_cell([0.2, 0.4])


def test_same_seed_twice_in_a_cell_is_an_error(tmp_path):
    make_run(tmp_path, "first", seed=1)
    make_run(tmp_path, "again", seed=1)
    with pytest.raises(ValueError, match="seed 1") as info:
        report.table(report.collect([tmp_path]))
    assert "first" in str(info.value) and "again" in str(info.value)


def test_mixed_settings_in_a_cell_are_an_error_unless_tabulated_by_that_key(tmp_path):
    for seed in range(2):
        make_run(tmp_path, f"g025_{seed}", "mrkd_tc", seed, gamma=0.025)
        make_run(tmp_path, f"g25_{seed}", "mrkd_tc", seed + 2, gamma=0.25)
    runs = report.collect([tmp_path])
    with pytest.raises(ValueError, match="gamma=0.025 vs 0.25"):
        report.table(runs)
    header, rows = parse_table(report.table(runs, columns="gamma"))
    assert header[2:] == ["gamma=0.025", "gamma=0.25"]
    assert rows[0][2].endswith("(2)") and rows[0][3].endswith("(2)")


def test_hyperparameters_a_method_ignores_are_not_compared(tmp_path):
    make_run(tmp_path, "ce0", "ce", 0, gamma=0.025, copies=1)
    make_run(tmp_path, "ce1", "ce", 1, gamma=0.25, copies=5)
    make_run(tmp_path, "ce2", "ce", 2, lr=0.05)
    runs = report.collect([tmp_path])
    with pytest.raises(ValueError, match="lr=0.1 vs 0.05"):
        report.table(runs)
    assert parse_table(report.table(runs[:2]))[1][0][2].endswith("(2)")


def test_differences_pair_each_method_with_the_baseline_on_the_same_seed(tmp_path):
    """Seeds 0-3 of ce, 1-3 of lsrkd (seed 4 has no baseline), 0-1 of mrkd-3 with one
    run's NLL null: cells against a NumPy transcription of mean ± std of the pairs."""
    made = {}
    for method, seeds, copies in [("ce", range(4), 3), ("lsrkd", [1, 2, 3, 4], 3), ("mrkd", [0, 1], 3)]:
        for seed in seeds:
            extra = {"test_nll": None} if (method, seed) == ("mrkd", 1) else {}
            made[method, seed] = make_run(tmp_path, f"{method}{seed}", method, seed, copies=copies, **extra)
    runs = report.collect([tmp_path])

    def expected(method, seeds, metric, scale, decimals):
        diffs = np.array([made[method, s][metric] - made["ce", s][metric] for s in seeds]) * scale
        if len(diffs) == 1:
            return f"{diffs.mean():+.{decimals}f} (1)"
        return f"{diffs.mean():+.{decimals}f} ± {diffs.std(ddof=1):.{decimals}f} ({len(diffs)})"

    header, rows = parse_table(report.differences(runs))
    assert header == ["dataset", "model", "LsrKD", "MrKD-3"]
    assert rows[0][2:] == [expected("lsrkd", [1, 2, 3], "test_error", 100.0, 2),
                           expected("mrkd", [0, 1], "test_error", 100.0, 2)]
    _, rows = parse_table(report.differences(runs, metric="test_nll"))
    assert rows[0][2:] == [expected("lsrkd", [1, 2, 3], "test_nll", 1.0, 3),
                           expected("mrkd", [0], "test_nll", 1.0, 3)]
    with pytest.raises(ValueError, match=r"`baseline` must name the method of one column; 'lsr' has 0"):
        report.differences(runs, baseline="lsr")


def test_runs_in_bfloat16_are_columns_of_their_own_set_against_the_float32_baseline(tmp_path):
    """ce in float32 (one run from before --precision), ce in bf16, MrKD-3 with bf16 teachers:
    three columns, and the differences are taken from the float32 baseline."""
    def settings(precision="float32", teachers="same"):
        return {"hyperparameters": {**HYPERPARAMETERS, "precision": precision,
                                    "teacher_precision": teachers}}

    made = {}
    for seed in range(2):
        made["ce", seed] = make_run(tmp_path, f"ce{seed}", "ce", seed,
                                    **({"hyperparameters": HYPERPARAMETERS} if seed == 0 else settings()))
        made["bf16", seed] = make_run(tmp_path, f"bf{seed}", "ce", seed, **settings("mixed_bfloat16"))
        made["mrkd", seed] = make_run(tmp_path, f"mr{seed}", "mrkd", seed, **settings(teachers="bfloat16"))
    runs = report.collect([tmp_path])
    header, _ = parse_table(report.table(runs))
    assert header == ["dataset", "model", "Baseline", "Baseline (bf16)", "MrKD-3 (bf16 teachers)"]
    header, rows = parse_table(report.differences(runs))
    assert header == ["dataset", "model", "Baseline (bf16)", "MrKD-3 (bf16 teachers)"]
    diffs = np.array([made["bf16", s]["test_error"] - made["ce", s]["test_error"] for s in (0, 1)])
    assert rows[0][2] == f"{100 * diffs.mean():+.2f} ± {100 * diffs.std(ddof=1):.2f} (2)"


def test_runs_of_auto_precision_go_to_the_column_of_the_value_they_resolved_to(tmp_path):
    """results.json's hyperparameters hold the resolved precisions (precision_requested says
    auto): MrKD resolved to bfloat16 teachers is the bf16-teachers column, one resolved to
    same shares the float32 cell with a run given --teacher_precision=same."""
    def run(name, seed, teachers, requested):
        hyperparameters = {**HYPERPARAMETERS, "precision": "float32", "teacher_precision": teachers}
        return make_run(tmp_path, name, "mrkd", seed, hyperparameters=hyperparameters,
                        precision_requested={"precision": "float32", "teacher_precision": requested},
                        precision_reason=f"teacher_precision={requested}: {teachers}")

    run("auto_bf16", 0, "bfloat16", "auto")
    run("auto_same", 0, "same", "auto")
    run("given_same", 1, "same", "same")
    runs = report.collect([tmp_path])
    header, rows = parse_table(report.table(runs))
    assert header == ["dataset", "model", "MrKD-3", "MrKD-3 (bf16 teachers)"]
    assert rows[0][2].endswith("(2)") and rows[0][3].endswith("(1)")


def test_table_all_has_three_tables_the_differences_and_the_skipped_count(sweep):
    root, made = sweep
    text = report.table_all(report.collect([root]))
    titles = ["Top-1 test error (%)", "Test negative log-likelihood (nats)",
              "Test expected calibration error (%, 15 bins)"]
    assert [line for line in text.splitlines() if line.startswith("###")] == [
        *(f"### {title}" for title in titles),
        *(f"### {title}: method minus baseline, same seed" for title in titles),
    ]
    only_ce = [run for run in report.collect([root]) if run["method"] == "ce"]
    assert "minus baseline" not in report.table_all(only_ce)
    assert "1 incomplete run(s) skipped" in text
    assert expected_cell([made["ce", s]["test_nll"] for s in range(3)], 1.0, 3) in text


def test_empty_runs_is_an_error():
    with pytest.raises(ValueError, match="`runs` is empty"):
        report.table([])


# --------------------------------------------------------------------------
# history and plot
# --------------------------------------------------------------------------


def test_read_history_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    (tmp_path / "history.csv").write_text(
        "epoch,loss,val_accuracy\n0,2.0,0.1\n1,1.5,0.2\n1,1.4,0.25\n2,1.0,\n"
    )
    history = report.read_history(tmp_path)
    np.testing.assert_array_equal(history["epoch"], [0, 1, 2])
    np.testing.assert_array_equal(history["loss"], [2.0, 1.4, 1.0])
    assert history["val_accuracy"][1] == 0.25 and np.isnan(history["val_accuracy"][2])


def test_read_history_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="history.csv"):
        report.read_history(tmp_path)
    (tmp_path / "history.csv").write_text("epoch,loss\n0,oops\n")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "history.csv"))):
        report.read_history(tmp_path)


def test_plot_curves_writes_a_png(sweep):
    root, _ = sweep
    out = report.plot_curves([root], root / "plots" / "curves.png")
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary left


def test_plot_curves_adds_the_teacher_diagnostics_of_distillation_runs(tmp_path, monkeypatch):
    """MrKD runs log teacher_accuracy, teacher_top_probability and teaching_copies (NaN in
    epochs where no copy taught): they get panels beside the test error, one row per model."""
    for seed in range(2):
        make_run(tmp_path, f"ce_{seed}", "ce", seed)
        make_run(tmp_path, f"mrkd_{seed}", "mrkd", seed)
        with open(tmp_path / f"mrkd_{seed}" / "history.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "val_accuracy", "teacher_accuracy",
                             "teacher_top_probability", "teaching_copies"])
            writer.writerow([0, 0.4, "nan", "nan", 0.0])
            for epoch in range(1, 4):
                writer.writerow([epoch, 0.5 + 0.1 * epoch, 0.3 + 0.1 * epoch, 0.5, min(epoch, 3)])
    drawn = []
    original = report._aggregate

    def recording(curves):
        drawn.append(np.stack([c[1] for c in curves]))
        return original(curves)

    monkeypatch.setattr(report, "_aggregate", recording)
    import matplotlib.axes
    import matplotlib.image

    titles = []
    original_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, title, *a, **k: titles.append(title) or original_title(ax, title, *a, **k))
    out = report.plot_curves([tmp_path], tmp_path / "curves.png")
    image = matplotlib.image.imread(out)
    # Two panels across, two rows: 1440 x 864 pixels, readable on a laptop's screen.
    assert (image.shape[1], image.shape[0]) == (1440, 864)
    assert len(titles) == 4 and len(set(titles)) == 4, titles  # each names its metric
    assert titles[0] == "test error: cifar100 / resnet56"
    # test error of ce and mrkd, then MrKD's three diagnostics (ce has none)
    assert len(drawn) == 5
    np.testing.assert_allclose(drawn[2][0], [np.nan, 40.0, 50.0, 60.0])  # accuracy in %
    np.testing.assert_allclose(drawn[4][0], [0.0, 1.0, 2.0, 3.0])


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def test_cli_prints_tables_and_writes_files(sweep, capsys):
    root, made = sweep
    markdown, plot = root / "out" / "tables.md", root / "out" / "curves.png"
    assert report.main([str(root / "a"), str(root / "b"), "--markdown", str(markdown),
                        "--plot", str(plot)]) == 0
    out, err = capsys.readouterr()
    assert "Skipped 1 incomplete run(s)" in err
    assert out == markdown.read_text()
    assert expected_cell([made["ce", s]["test_error"] for s in range(3)]) in out
    assert plot.read_bytes().startswith(PNG_SIGNATURE)


def test_cli_plot_without_a_name_goes_beside_the_results(sweep, capsys, tmp_path, monkeypatch):
    root, _ = sweep
    monkeypatch.chdir(tmp_path)  # not where the figure should land
    assert report.main([str(root / "a"), str(root / "b"), "--plot"]) == 0
    plot = root / "a" / report.PLOT_FILE
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    assert f"Wrote {plot}" in capsys.readouterr().err
    assert not (tmp_path / report.PLOT_FILE).exists()
    plot.unlink()


def test_cli_reports_a_malformed_file(tmp_path, capsys):
    bad = tmp_path / "run" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{")
    assert report.main([str(tmp_path)]) == 2
    assert str(bad.resolve()) in capsys.readouterr().err


def test_cli_with_no_completed_run(tmp_path, capsys):
    make_run(tmp_path, "unfinished", completed=False)
    assert report.main([str(tmp_path)]) == 2
    assert "no completed run" in capsys.readouterr().err


def test_docstring_examples_run():
    result = doctest.testmod(report)
    assert result.attempted > 0 and result.failed == 0


def test_mrkd_with_initial_weights_teaching_is_its_own_column(tmp_path):
    runs = [make_run(tmp_path, f"m{s}", "mrkd", s, copies=3) for s in range(2)]
    runs += [make_run(tmp_path, f"l{s}", "mrkd", s, copies=3, initial_weights_teach=True)
             for s in range(2)]
    header, rows = parse_table(report.table(runs))
    assert "MrKD-3" in header and "MrKD-3 (initial weights teach)" in header
    assert header.index("MrKD-3") < header.index("MrKD-3 (initial weights teach)")


# --------------------------------------------------------------------------
# P's Table 2 layout
# --------------------------------------------------------------------------


def test_p_table2_rows_are_methods_with_accuracy_and_time(tmp_path, capsys):
    made = {}
    for dataset in ("cifar100", "cifar10"):
        for method in ("ce", "tf_reg", "pseudo_kd"):
            for seed in range(3):
                made[dataset, method, seed] = make_run(
                    tmp_path, f"{dataset}/{method}/{seed}", method=method, seed=seed,
                    dataset=dataset, model="resnet18", wall_seconds=3600.0 * (1 + seed),
                )
        for teacher in ("shufflenetv2", "resnext29_8x64d"):  # P's KD-Shuffle and KD-29
            make_run(tmp_path, f"{dataset}/kd_{teacher}/0", method="kd", dataset=dataset,
                     model="resnet18", teacher_model=teacher, wall_seconds=600.0)
    text = report.p_table2(report.collect([tmp_path]))
    lines = text.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == [
        "method", "cifar10 resnet18 accuracy", "cifar10 resnet18 time",
        "cifar100 resnet18 accuracy", "cifar100 resnet18 time",
    ]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert list(rows) == ["Baseline", "Pseudo-KD", "TF-reg", "KD-resnext29_8x64d", "KD-shufflenetv2"]
    accuracy = [100 * (1 - made["cifar100", "tf_reg", s]["test_error"]) for s in range(3)]
    assert rows["TF-reg"][2] == f"{np.mean(accuracy):.2f} ± {np.std(accuracy, ddof=1):.2f} (3)"
    assert rows["TF-reg"][3] == "2.0 h" and rows["KD-shufflenetv2"][1] == "10 min"
    assert report.main([str(tmp_path), "--layout", "p_table2"]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_results_written_before_precision_share_a_cell_with_newer_runs(tmp_path):
    """An old results.json's ``mixed_precision`` (a boolean) reads as ``precision``: a float32
    run of then and one of now are one setting; a mixed_float16 run of then is another column."""
    old = {key: value for key, value in HYPERPARAMETERS.items()
           if key not in ("precision", "teacher_precision")}
    make_run(tmp_path, "old", "ce", 0, hyperparameters={**old, "mixed_precision": False})
    make_run(tmp_path, "new", "ce", 1, hyperparameters={**old, "precision": "float32",
                                                        "teacher_precision": "same"})
    runs = report.collect([tmp_path])
    assert {run["hyperparameters"]["precision"] for run in runs} == {"float32"}
    assert all("mixed_precision" not in run["hyperparameters"] for run in runs)
    assert parse_table(report.table(runs))[1][0][2].endswith("(2)")
    make_run(tmp_path, "old16", "ce", 2, hyperparameters={**old, "mixed_precision": True})
    header, rows = parse_table(report.table(report.collect([tmp_path])))
    assert header[2:] == ["Baseline", "Baseline (fp16)"]
    assert rows[0][2].endswith("(2)") and rows[0][3].endswith("(1)")


def test_results_written_before_keep_best_share_a_cell_with_newer_runs(tmp_path):
    """A results.json from before --keep_best (no key) ran without it: one setting with a run
    of now that says keep_best=False; one with keep_best=True is another setting."""
    old = {key: value for key, value in HYPERPARAMETERS.items() if key != "keep_best"}
    make_run(tmp_path, "old", "ce", 0, hyperparameters=old)
    make_run(tmp_path, "new", "ce", 1, hyperparameters={**old, "keep_best": False})
    runs = report.collect([tmp_path])
    assert {run["hyperparameters"]["keep_best"] for run in runs} == {False}
    assert parse_table(report.table(runs))[1][0][2].endswith("(2)")
    make_run(tmp_path, "best", "ce", 2, hyperparameters={**old, "keep_best": True})
    with pytest.raises(ValueError, match="differ in keep_best="):
        report.table(report.collect([tmp_path]))


# --------------------------------------------------------------------------
# P's Table 3 layout (GLUE)
# --------------------------------------------------------------------------

# P's Table 3 means, the seed-0 scores of the fake runs below (Teacher: one seed).
P_TABLE3 = {
    "teacher": {"cola": 68.1, "mrpc": 91.9, "rte": 86.3, "sst2": 96.4, "qnli": 94.6, "qqp": 91.5,
                "mnli": 89.9},
    "ce": {"cola": 61.0, "mrpc": 86.5, "rte": 69.1, "sst2": 92.7, "qnli": 91.2, "qqp": 91.3,
           "mnli": 83.4},
    "kd": {"cola": 61.4, "mrpc": 86.1, "rte": 70.2, "sst2": 92.6, "qnli": 91.5, "qqp": 91.8,
           "mnli": 84.4},
    "lsr": {"cola": 60.3, "mrpc": 86.4, "rte": 70.3, "sst2": 92.8, "qnli": 91.3, "qqp": 91.5,
            "mnli": 83.8},
    "pseudo_kd": {"cola": 61.4, "mrpc": 86.9, "rte": 70.4, "sst2": 93.0, "qnli": 91.5,
                  "qqp": 91.5, "mnli": 84.1},
}
SEED_OFFSETS = (0.0, -0.3, 0.5)  # seed s scores P's mean + SEED_OFFSETS[s]
TEACHER, STUDENT = "roberta_large_en", "distil_roberta_base_en"


def glue_results(task, column, seed, score=None, model=None, method=None, root="runs/p_glue",
                 mismatched=None, **overrides):
    """A results.json dict as experiment.text.run writes it for flags/p_table3/<task>/<column>.flags
    (output_dir as given to train.py, relative; a KD run's --teacher the teacher's seed-0 model)."""
    from keras_softkd.data.glue import GLUE_TASKS

    info = GLUE_TASKS[task]
    method = method or ("ce" if column == "teacher" else column)
    model = model or (TEACHER if column == "teacher" else STUDENT)
    if score is None:
        score = P_TABLE3[column][task] + SEED_OFFSETS[seed]
    teacher_dir = f"{root}/{task}/teacher/seed0"
    hyperparameters = {
        "alpha": {"lsr": 0.1, "pseudo_kd": 0.1, "kd": 0.5}.get(method, 0.1),
        "temperature": 5.0, "beta": 2.0, "teacher": f"{teacher_dir}/model.keras" if method == "kd"
        else None, "lr": 2e-5, "lr_schedule": "linear", "weight_decay": 0.01, "batch_size": 16,
        "train_examples": None, "validation_fraction": 0.0, "keep_best": False,
        "precision": "float32", "teacher_precision": "same", "strategy": "auto",
        "optimizer": "adamw", "sequence_length": 128, "warmup_fraction": 0.06,
    }
    accuracy = 0.0 if task == "cola" else score  # CoLA's headline is a Matthews correlation

    def split_scores(headline):
        values = {info.metrics[0]: headline, **({"f1": headline + 1.0} if "f1" in info.metrics
                                                  else {})}
        return {**values, "nll": 0.4, "ece": 0.05, "error": 1.0 - (accuracy or 70.0) / 100}

    glue = {info.dev_splits[0]: split_scores(score)}
    if len(info.dev_splits) > 1:
        glue[info.dev_splits[1]] = split_scores(score - 0.4 if mismatched is None else mismatched)
    results = {
        "method": method, "dataset": task, "model": model, "seed": seed, "epochs": 10,
        "hyperparameters": hyperparameters,
        "test_error": glue[info.dev_splits[0]]["error"], "test_top5_error": None,
        "test_nll": 0.4, "test_ece": 0.05,
        "glue": glue, "glue_metric": info.metrics[0], "glue_score": score,
        "diverged": False, "images_per_second": 300.0, "wall_seconds": 1200.0,
        "train_examples_used": 2490, "replicas": 1,
        **({"teacher_model": "roberta_text_classifier"} if method == "kd" else {}),
        "output_dir": f"{root}/{task}/{column}/seed{seed}", "completed": True,
        "versions": {"keras_softkd": "0.1.0", "keras": "3.15.1"},
    }
    if method == "kd":
        results["teacher_logits"] = "computed once over the training set before training"
    results.update(overrides)
    return results


def write_glue_run(root, results):
    """Writes ``results`` under ``root``/``results["output_dir"]``, as train.py run from ``root``."""
    run_dir = root / results["output_dir"]
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def p_table3_rows(text):
    header, rows = parse_table(text.split("\n\n")[0])
    return header, {row[0]: row[1:] for row in rows}


def test_p_table3_hand_computed_cells_and_average():
    """Student on RTE: 69.1, 68.8, 69.6 -> mean 69.1667, sample std 0.4041 (by hand); on
    CoLA: 61.0, 60.7, 61.5 -> 61.0667 ± 0.4041. Avg = (61.0667 + 69.1667) / 2 = 65.1167."""
    runs = [glue_results(task, "ce", seed) for task in ("rte", "cola") for seed in range(3)]
    runs += [glue_results(task, "teacher", 0) for task in ("rte", "cola")]
    header, rows = p_table3_rows(report.p_table3(runs))
    assert header == ["method", "CoLA", "RTE", "Avg."]  # P's order, not the input's
    assert list(rows) == ["Teacher", "Student", "w/ KD", "w/ LSR", "w/ Pseudo-KD"]
    assert rows["Student"] == ["61.07 ± 0.40 (3)", "69.17 ± 0.40 (3)", "65.12"]
    assert rows["Teacher"] == ["68.10 (1)", "86.30 (1)", "77.20"]
    assert rows["w/ KD"] == [report.MISSING] * 3


def test_p_table3_full_grid_matches_numpy(tmp_path):
    """Every task and column of flags/p_table3, 3 seeds (the teacher one): each cell is the
    mean ± sample std of its seeds, Avg. the mean of the row's seven task means."""
    runs = [glue_results(task, "teacher", 0) for task in P_TABLE3["ce"]]
    runs += [glue_results(task, column, seed) for task in P_TABLE3["ce"]
             for column in ("ce", "kd", "lsr", "pseudo_kd") for seed in range(3)]
    text = report.p_table3(list(reversed(runs)))
    header, rows = p_table3_rows(text)
    order = ["cola", "mrpc", "rte", "sst2", "qnli", "qqp", "mnli"]
    assert header == ["method", "CoLA", "MRPC", "RTE", "SST-2", "QNLI", "QQP", "MNLI", "Avg."]
    labels = {"Teacher": "teacher", "Student": "ce", "w/ KD": "kd", "w/ LSR": "lsr",
              "w/ Pseudo-KD": "pseudo_kd"}
    assert list(rows) == list(labels)
    for label, column in labels.items():
        seeds = SEED_OFFSETS[:1] if column == "teacher" else SEED_OFFSETS
        means = []
        for i, task in enumerate(order):
            values = [P_TABLE3[column][task] + offset for offset in seeds]
            assert rows[label][i] == expected_cell(values, scale=1.0), (label, task)
            means.append(np.mean(values))
        assert rows[label][-1] == f"{np.mean(means):.2f}", label
    assert rows["Teacher"][-1] == "88.39"  # P: 88.4
    notes = text.split("\n\n")[1]
    assert "Teacher: roberta_large_en (the ce runs KD's --teacher names)" in notes
    assert "students: distil_roberta_base_en" in notes and "not P's" not in notes
    mismatched = expected_cell([P_TABLE3["ce"]["mnli"] - 0.4 + o for o in SEED_OFFSETS], 1.0)
    assert f"Student {mismatched}" in notes.split("MNLI mismatched")[1]


def test_p_table3_teacher_is_the_other_ce_model_without_kd():
    runs = [glue_results("rte", "teacher", 0)]
    runs += [glue_results("rte", column, seed) for column in ("ce", "lsr") for seed in range(2)]
    header, rows = p_table3_rows(report.p_table3(runs))
    assert rows["Teacher"][0] == "86.30 (1)" and rows["Student"][0].endswith("(2)")
    assert rows["w/ LSR"][0].endswith("(2)") and rows["w/ Pseudo-KD"][0] == report.MISSING
    # ce runs only: the model with more runs is the students'; the teacher row the other.
    only_ce = [glue_results("rte", "teacher", 0)] + [glue_results("rte", "ce", s) for s in range(3)]
    rows = p_table3_rows(report.p_table3(only_ce))[1]
    assert rows["Teacher"][0] == "86.30 (1)" and rows["Student"][0].endswith("(3)")
    # One model only: no teacher, every ce run a student.
    rows = p_table3_rows(report.p_table3(only_ce[1:]))[1]
    assert rows["Teacher"][0] == report.MISSING and rows["Student"][0].endswith("(3)")
    # As many runs of two ce models and nothing else: no way to tell, said rather than guessed.
    with pytest.raises(ValueError, match="no way to tell"):
        report.p_table3(only_ce[:2])
    # Two candidate teachers beside the students: an error, not a mixed row.
    other = glue_results("rte", "teacher", 0, model="roberta_base_en",
                         output_dir="runs/p_glue/rte/teacher_base/seed0")
    with pytest.raises(ValueError, match="2 models other than the students'"):
        report.p_table3(runs + [other])


def test_p_table3_kd_names_its_teacher_even_of_the_students_own_model(tmp_path):
    """A KD teacher of the students' model (a scratch BERT) is told apart by the run KD names:
    its folder, here an absolute path matched to run_dir (no output_dir in its results)."""
    root = tmp_path / "runs"
    teacher = glue_results("sst2", "teacher", 0, model="bert_tiny_scratch", score=80.0,
                           output_dir="runs/sst2/teacher")
    del teacher["output_dir"]
    teacher_dir = root / "sst2" / "teacher"
    teacher_dir.mkdir(parents=True)
    (teacher_dir / "results.json").write_text(json.dumps(teacher))
    for seed, score in enumerate((75.0, 77.0)):
        write_glue_run(tmp_path, glue_results("sst2", "ce", seed, score=score,
                                              model="bert_tiny_scratch", root="runs"))
        kd = glue_results("sst2", "kd", seed, score=score + 1, model="bert_tiny_scratch",
                          root="runs")
        kd["hyperparameters"]["teacher"] = str(teacher_dir / "model.keras")
        write_glue_run(tmp_path, kd)
    text = report.p_table3(report.collect([root]))
    rows = p_table3_rows(text)[1]
    assert rows["Teacher"] == ["80.00 (1)", "80.00"]
    assert rows["Student"] == ["76.00 ± 1.41 (2)", "76.00"]
    assert rows["w/ KD"] == ["77.00 ± 1.41 (2)", "77.00"]
    assert "those only" in text


def test_p_table3_two_kd_teachers_and_a_third_model_are_errors():
    runs = [glue_results("rte", "teacher", 0), glue_results("rte", "kd", 0)]
    second = glue_results("rte", "teacher", 0, model="roberta_base_en",
                          output_dir="runs/p_glue/rte/teacher2/seed0")
    kd2 = glue_results("rte", "kd", 1)
    kd2["hyperparameters"]["teacher"] = "runs/p_glue/rte/teacher2/seed0/model.keras"
    with pytest.raises(ValueError, match="as their teacher"):
        report.p_table3(runs + [second, kd2])
    # A third model's ce runs beside the students' in the Student row: the cell check says so.
    third = glue_results("rte", "ce", 1, model="bert_tiny_scratch")
    with pytest.raises(ValueError, match="differ in model"):
        report.p_table3(runs + [glue_results("rte", "ce", 0), third])


def test_p_table3_missing_tasks_and_rows_without_every_task_have_no_average():
    runs = [glue_results(task, "ce", seed) for task in ("mnli", "sst2") for seed in range(2)]
    runs += [glue_results("sst2", "pseudo_kd", 0), glue_results("mnli", "lsr", 0)]
    runs[-1].update(glue_score=None, glue=None)  # a diverged run: no score, does not count
    text = report.p_table3(runs)
    header, rows = p_table3_rows(text)
    assert header == ["method", "SST-2", "MNLI", "Avg."]  # only the tasks with runs
    student = [np.mean([P_TABLE3["ce"][t] + o for o in SEED_OFFSETS[:2]]) for t in ("sst2", "mnli")]
    assert rows["Student"][-1] == f"{np.mean(student):.2f}"
    assert rows["w/ Pseudo-KD"] == ["93.00 (1)", report.MISSING, report.MISSING]
    assert rows["w/ LSR"] == [report.MISSING] * 3
    assert "over the 2 task(s) shown, not P's 7" in text
    assert "Teacher: none" in text


def test_p_table3_ignores_image_runs_and_says_when_there_is_no_glue_run(tmp_path, capsys):
    images = [make_run(tmp_path / "img", f"ce{s}", "ce", s) for s in range(2)]
    text = report.p_table3(images + [glue_results("rte", "ce", 0)])
    assert text.splitlines()[-1] == "2 run(s) not on a GLUE task ignored (cifar100)."
    assert p_table3_rows(text)[0] == ["method", "RTE", "Avg."]
    line = report.p_table3(images)
    assert line.startswith("No GLUE run") and "cifar100" in line and "\n" not in line
    assert report.main([str(tmp_path / "img"), "--layout=p_table3"]) == 0
    assert capsys.readouterr().out == line + "\n"


def test_p_table3_end_to_end_through_main(tmp_path, capsys, monkeypatch):
    """results.json files where the flagfiles write them, read by the command line."""
    monkeypatch.chdir(tmp_path)
    for task in ("rte", "mrpc", "mnli"):
        write_glue_run(tmp_path, glue_results(task, "teacher", 0))
        for column in ("ce", "kd", "lsr", "pseudo_kd"):
            for seed in range(3):
                write_glue_run(tmp_path, glue_results(task, column, seed))
    unfinished = glue_results("rte", "ce", 1, output_dir="runs/p_glue/rte/ce/seed9")
    write_glue_run(tmp_path, {**unfinished, "completed": False})
    write_glue_run(tmp_path, glue_results("mnli", "teacher", 0, root="other", mismatched=88.0))
    out = tmp_path / "table3.md"
    argv = ["runs/p_glue", "--layout=p_table3", "--markdown", str(out)]
    assert report.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text() == report.p_table3(report.collect(["runs/p_glue"])) + "\n"
    header, rows = p_table3_rows(printed)
    assert header == ["method", "MRPC", "RTE", "MNLI", "Avg."]
    kd = [P_TABLE3["kd"]["rte"] + o for o in SEED_OFFSETS]
    assert rows["w/ KD"][1] == f"{np.mean(kd):.2f} ± {np.std(kd, ddof=1):.2f} (3)"
    teacher = [P_TABLE3["teacher"][t] for t in ("mrpc", "rte", "mnli")]
    assert rows["Teacher"] == [f"{v:.2f} (1)" for v in teacher] + [f"{np.mean(teacher):.2f}"]
    assert printed.rstrip().splitlines()[-1] == "1 incomplete run(s) skipped."
    assert f"Teacher {P_TABLE3['teacher']['mnli'] - 0.4:.2f} (1)" in printed
