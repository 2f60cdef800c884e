"""Studies: the study file format, the shipped study, and a whole (tiny) study down to REPORT.md."""

import csv
import re
import subprocess
import sys

import pytest

from conftest import small_bn_net, write_architecture_file

from npconv.errors import NpconvError
from npconv.experiments.study import Published, config_id, load_study, shrink, study_cells
from npconv.experiments.sweep import run_sweep
from npconv.train.settings import make_config

TINY_STUDY = """
title = "A tiny study"
seeds = [0, 1]
baseline_note = "Plain SGD on 200 images."

[baseline]
model = "mlp"
epochs = 2
batch_size = 50
lr = 0.05
lr_schedule = "constant"
momentum = 0.0
weight_decay = 0.0
train_subset = 200

[[section]]
id = "curves"
kind = "curves"
title = "The MLP's curves"
study = { train_loss = 1.5, train_acc = 60.0, test_acc = 55.0 }
study_says = "It learns."

[[section]]
id = "models"
kind = "models"
title = "CNN vs MLP"
models = ["cnn", "mlp"]
target_acc = 30.0

[[section]]
id = "lr"
kind = "sweep"
title = "Learning rate"
vary = "lr"
values = [0.01, 0.05, 0.5]
study = [[2.0, 40.0, 40.0], [1.5, 60.0, 55.0], [2.3, 10.0, 9.8]]

[[section]]
id = "grid"
kind = "grid"
title = "Batch size x epochs"
batch_sizes = [50, 100]
epochs = [1, 2]

[[section]]
id = "ablation"
kind = "ablation"
title = "Two ways to sum the loss"
cases = [{ label = "base", study = 55.0 }, { label = "lr 0.5", set = { lr = 0.5 }, study = 9.8 }]
variants = [{ label = "mean" }, { label = "summed, batch of 50", set = { loss_reduction = "sum" } }]
"""


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "npconv", *args], capture_output=True, text=True, timeout=300)


def quiet(_line):
    pass


def test_the_shipped_study_replicates_the_course_study():
    study = load_study()
    assert study.seeds == [0, 1, 2]
    assert study.baseline == {"model": "cnn", "dataset": "mnist", "epochs": 10, "batch_size": 100, "optimizer": "sgd",
                              "lr": 0.001, "lr_schedule": "constant", "momentum": 0.0, "weight_decay": 0.005}
    kinds = [s.kind for s in study.sections]
    assert kinds == ["curves", "models", "sweep", "sweep", "grid", "sweep", "sweep"], kinds
    sweeps = {s.options["vary"]: s.options for s in study.sections if s.kind == "sweep"}
    assert sweeps["lr"]["values"] == [0.0001, 0.001, 0.01, 0.1]
    assert sweeps["weight_decay"]["values"] == [0.0005, 0.005, 0.05, 0.5]
    assert sweeps["lr"]["study"][3] == Published(2.5035, 9.63, 9.82), "the study's figures sit beside ours"
    cells = study_cells(study)
    distinct = {config_id(c.config) for c in cells}
    # 12 ConvNet settings of 10 epochs (shared baseline counted once), the MLP, 3 grid runs of 20 epochs; 3 seeds.
    assert len(distinct) == 16 * 3, len(distinct)


def test_quick_look_shrinks_every_run():
    study = shrink(load_study(), epochs=1, train_subset=1000, seeds=[0])
    configs = [c.config for c in study_cells(study)]
    assert {c.train_subset for c in configs} == {1000} and {c.seed for c in configs} == {0}
    grid = next(s for s in study.sections if s.kind == "grid")
    assert grid.options["epochs"] == [1, 2], "5, 10, 20 epochs scaled by 1/10, at least 1, repeats dropped"
    assert {c.epochs for c in configs} == {1, 2}


@pytest.mark.parametrize("edit, message", [
    ('title = "x"\nmystery = 1\n', "unknown key(s) mystery"),
    ('\n[[section]]\nid = "a"\nkind = "table"\n', "kind must be one of curves, models, sweep, grid"),
    ('\n[[section]]\nid = "a"\nkind = "sweep"\nvary = "speed"\nvalues = [1]\n', "vary must name a training setting"),
    ('\n[[section]]\nid = "a"\nkind = "sweep"\nvary = "lr"\nvalues = []\n', "values must be a non-empty list"),
    ('\n[[section]]\nid = "a"\nkind = "sweep"\nvary = "lr"\nvalues = [0.1, 1.0]\nstudy = [[1, 2, 3]]\n',
     "study must hold one row"),
    ('\n[[section]]\nid = "a"\nkind = "sweep"\nvary = "lr"\nvalues = [-1.0]\n', "lr must be a finite number > 0"),
    ('\n[[section]]\nid = "a"\nkind = "grid"\nbatch_sizes = [32]\nepochs = [0]\n', "epochs must be a non-empty list"),
    ('\n[[section]]\nid = "a"\nkind = "ablation"\ncases = [{ label = "x" }]\nvariants = [{ set = {} }]\n',
     "every entry of variants needs its own label"),
    ('\n[[section]]\nid = "a"\nkind = "ablation"\ncases = [{ label = "x" }]\nvariants = [{ label = "v", lr = 1 }]\n',
     "variants entry 'v': unknown key(s) lr"),
    ('\n[[section]]\nid = "a"\nkind = "ablation"\ncases = [{ label = "x", set = { lr = -1.0 } }]\n'
     'variants = [{ label = "v" }]\n', "lr must be a finite number > 0"),
])
def test_bad_study_files_are_clear_errors(tmp_path, edit, message):
    base = TINY_STUDY.replace('title = "A tiny study"\n', "") if "title" in edit else TINY_STUDY
    path = tmp_path / "bad.toml"
    path.write_text(base + edit if not edit.startswith("title") else edit + base)
    with pytest.raises(NpconvError) as e:
        load_study(path)
    assert str(path) in str(e.value) and message in str(e.value), str(e.value)


def test_bad_study_file_on_the_command_line_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("title = [unclosed\n")
    result = run_cli("study", "--config", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "not a readable TOML file" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_first_epochs_of_a_constant_lr_run_are_the_shorter_run(tmp_path):
    # The grid reads E-epoch figures from a longer run's history: it must be exact.
    short = make_config(dict(model="mlp", epochs=1, train_subset=200, batch_size=50, lr=0.05, lr_schedule="constant",
                             momentum=0.0))
    longer = make_config({**vars(short), "epochs": 2})
    runs = run_sweep([short, longer], str(tmp_path), workers=1, progress=False, estimate=False, log=quiet)
    rows = [list(csv.DictReader(open(f"{r.folder.path}/history.csv"))) for r in runs]
    first = {k: v for k, v in rows[1][0].items() if k != "seconds"}
    assert first == {k: v for k, v in rows[0][0].items() if k != "seconds"}, (rows[0][0], rows[1][0])


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    (folder / "tiny.toml").write_text(TINY_STUDY)
    out = folder / "out"
    result = run_cli("study", "--config", str(folder / "tiny.toml"), "--out", str(out), "--workers", "2")
    assert result.returncode == 0, result.stderr
    return folder, out, result


def test_study_writes_a_complete_report(tiny_study):
    folder, out, result = tiny_study
    first, second = result.stdout.splitlines()[:2]
    assert first == "14 runs: 0 already done, 14 to train on 2 local worker processes", first
    assert second.startswith("estimated "), second
    report = (out / "REPORT.md").read_text()
    headings = re.findall(r"^## (.*)$", report, re.M)
    assert headings == ["Setup", "Findings", "1. The MLP's curves", "2. CNN vs MLP", "3. Learning rate",
                        "4. Batch size x epochs", "5. Two ways to sum the loss"], headings
    assert f"Study file: `{folder / 'tiny.toml'}`. Every run's folder" in report
    assert "Seeds: 0, 1." in report and "Plain SGD on 200 images." in report
    # One table per study table, ours beside the study's, mean ± std over the seeds.
    assert "| lr | train loss (ours) | (study) | train acc % (ours) | (study) | test acc % (ours) | (study) | note |" \
        in report
    lr_rows = [line for line in report.splitlines() if re.match(r"\| 0\.(01|05|5) \|", line)]
    assert len(lr_rows) == 3 and all("±" in row for row in lr_rows), lr_rows
    assert "| model | seconds / epoch | training seconds |" in report and "epochs to 30 % test" in report
    assert "| batch \\ epochs | 1 | 2 |" in report
    # Verdicts come from the numbers, one per claim.
    findings = report.split("## Findings")[1].split("## 1.")[0]
    verdicts = re.findall(r"\*\*(reproduced|not reproduced|inconclusive)\*\*", findings)
    assert len(verdicts) >= 6, findings
    assert "0.5 collapses to chance" in findings, "the study's lr 0.5 collapsed: our runs are checked for it"
    # The ablation: a table of variants x cases, and a verdict per collapse the study reports.
    assert "| variant | base: test acc % | lr 0.5: test acc % | reproduces |" in report
    assert re.search(r"lr 0\.5 collapses to chance \(the study: 9\.80 %\): (reproduced|no variant)", report), report
    for name in ("curves", "models", "lr", "grid", "ablation"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
        assert f"(figures/{name}.png)" in report
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 14 and {r["status"] for r in rows} <= {"completed", "diverged"}


def test_study_again_reuses_every_run(tiny_study):
    folder, out, _ = tiny_study
    again = run_cli("study", "--config", str(folder / "tiny.toml"), "--out", str(out), "--quiet")
    assert again.returncode == 0, again.stderr
    assert "from 14 runs (14 reused from earlier invocations)" in (out / "REPORT.md").read_text()


def test_a_study_compares_presets_and_model_files(tmp_path):
    net = write_architecture_file(tmp_path / "net.toml", small_bn_net())
    path = tmp_path / "study.toml"
    path.write_text(TINY_STUDY.replace('models = ["cnn", "mlp"]', f'models = ["lenet5", "cnn-bn", "{net}"]'))
    cells = [c for c in study_cells(load_study(path)) if c.section == "models"]
    configs = {c.row: c.config for c in cells if c.seed == 0}
    assert set(configs) == {"lenet5", "cnn-bn", net}
    assert configs["cnn-bn"].augment_shift == 2, "a preset's own defaults fill what the baseline does not set"
    assert configs["cnn-bn"].epochs == 2, "the baseline's settings win over a preset's defaults"
    assert configs[net].model_layers[1]["type"] == "batchnorm2d", "an architecture file's config carries its layers"


def test_the_shipped_collapse_studies_share_their_baseline_runs_with_the_default_study():
    from importlib import resources

    default = {config_id(c.config) for c in study_cells(load_study())}
    for name in ("collapse.toml", "collapse-screen.toml"):
        study = load_study(str(resources.files("npconv") / "studies" / name))
        (section,) = study.sections
        assert section.kind == "ablation" and [c["study"] for c in section.options["cases"]] == [93.82, 9.82, 9.80]
        ours = [c for c in study_cells(study) if c.row[0] == 0]  # the first variant: npconv's own choices
        assert ours and all(config_id(c.config) in default for c in ours), "the same runs as the default study's"


def test_figures_of_a_one_epoch_quick_look_draw_points(tmp_path):
    """A quick look's curves have one epoch: markers, one tick, no fractional axis and no error."""
    from npconv.plots import plot_curves
    from npconv.train.loop import EpochStats

    one = [[EpochStats(1, 2.29, 0.2, 2.28, 0.25, 0.2)], [EpochStats(1, 2.3, 0.22, 2.27, 0.3, 0.2)]]
    for series in ([("", one)], [("cnn", one), ("mlp", one)]):
        path = tmp_path / f"{len(series)}.png"
        plot_curves(series, path, "quick")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
