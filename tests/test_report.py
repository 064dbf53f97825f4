"""`memadmm report` on one tiny real run: the figures are PNGs, summary.md gives the summary table back."""

import io
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

# tests import each other by module name: pytest puts tests/ on sys.path (rootdir-based "prepend" import mode)
from test_pipeline_ray import invoke_run

from pipeline.cli import main
from pipeline.report import FIGURES, pareto_front, tune_trials
from pipeline.tables import read_table, write_table

PNG = b"\x89PNG\r\n\x1a\n"
RUN = "tiny-report"


@pytest.fixture(scope="module")
def root(ray_session, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("report"))
    invoke_run(root, RUN)
    return root


def report(*args):
    return CliRunner().invoke(main, ["report", *args])


@pytest.fixture(scope="module")
def written(root):
    result = report(root, "--run-id", RUN)
    assert result.exit_code == 0, result.output
    return Path(root, "runs", RUN, "report"), result.output


def check_png(data: bytes) -> None:
    assert data[:8] == PNG and len(data) > 1000
    image = imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_the_four_figures_are_pngs_and_the_command_says_where(written):
    out, output = written
    assert str(out) in output
    for name in FIGURES:
        assert name in output
        check_png((out / name).read_bytes())
    text = (out / "summary.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in text          # linked, none skipped
    assert "skipped" not in text


# ---- summary.md against the summary table ---------------------------------------------------

def headline(text: str) -> dict[str, tuple[str, str]]:
    """quantity -> (value, unit) from the Headline table."""
    part = text.split("## Headline", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in part.splitlines()
            if line.startswith("| ") and not line.startswith("| ---") and not line.startswith("| quantity")]
    return {r[0]: (r[1], r[2]) for r in rows}


def agrees(printed: str, value: float) -> None:
    """`printed` is `value` rounded to the decimals it shows."""
    decimals = len(printed.split(".", 1)[1]) if "." in printed else 0
    assert abs(float(printed) - value) <= 0.5 * 10 ** -decimals + 1e-9, (printed, value)


def test_summary_md_prints_the_summary_tables_numbers(root, written):
    out, _ = written
    text = (out / "summary.md").read_text()
    s = read_table(root, "summary", RUN).iloc[0]
    assert RUN in text and f"`{s['model']}`" in text and f"`{s['dataset']}`" in text
    h = headline(text)
    for quantity, column, unit in (("baseline test accuracy", "baseline_accuracy", "%"),
                                   ("final test accuracy", "final_accuracy", "%"),
                                   ("accuracy loss", "accuracy_loss", "points"),
                                   ("magnitude-pruning test accuracy", "magnitude_accuracy", "%"),
                                   ("ADMM gain over magnitude pruning", "admm_gain", "points"),
                                   ("power reduction", "power_reduction", "%"),
                                   ("area reduction", "area_reduction", "%")):
        assert h[quantity][1] == unit
        agrees(h[quantity][0], 100 * s[column])
    for quantity, column in (("weight compression", "weight_compression"),
                             ("storage compression", "storage_compression")):
        assert h[quantity][1] == "x"
        agrees(h[quantity][0], s[column])
    for quantity, unit, dense, compressed in (("power", "mW", "power_dense_mw", "power_compressed_mw"),
                                              ("area", "mm2", "area_dense_mm2", "area_compressed_mm2")):
        a, b = h[quantity][0].split(" -> ")
        assert h[quantity][1] == unit
        agrees(a, s[dense])
        agrees(b, s[compressed])
    assert h["crossbars"][0] == f"{s['crossbars_dense']} -> {s['crossbars_compressed']}"
    assert h["weight bits"][0] == f"{s['baseline_weight_bits']} -> {s['weight_bits']}"
    # Monte Carlo: one row per scenario, in the summary's order
    mc = text.split("## Monte-Carlo", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in mc.splitlines()
            if line.startswith("| ") and not line.startswith("| ---") and not line.startswith("| scenario")]
    assert [r[0] for r in rows] == [m["scenario_id"] for m in s["montecarlo"]]
    for row, m in zip(rows, s["montecarlo"]):
        assert int(row[6]) == m["trials"]
        for printed, key in zip(row[7:10], ("mean", "std", "p5")):
            agrees(printed, 100 * m[key])


def test_summary_md_names_the_chosen_trial(root, written):
    out, _ = written
    trials = tune_trials(read_table(root, "tune", RUN))
    chosen = trials[trials["chosen"]]
    assert len(trials) == read_table(root, "tune", RUN)["trial_id"].nunique() and len(chosen) == 1
    assert f"Chosen trial `{chosen['trial_id'].item()}`" in (out / "summary.md").read_text()


def test_pareto_front_is_the_best_accuracy_at_or_above_each_compression():
    compression = np.array([4.0, 2.0, 8.0, 6.0])
    accuracy = np.array([0.90, 0.95, 0.70, 0.92])
    x, y = pareto_front(compression, accuracy)
    assert x.tolist() == [2.0, 4.0, 6.0, 8.0]
    assert y.tolist() == [0.95, 0.92, 0.92, 0.70]
    for xi, yi in zip(x, y):
        assert yi == accuracy[compression >= xi].max()


# ---- other roots, other runs, bad input -----------------------------------------------------

def test_a_memory_root_reads_and_writes_through_fsspec(root):
    memory = fsspec.filesystem("memory")
    memory.put(f"{root}/tables", "/memadmm-report-test/tables", recursive=True)
    result = report("memory://memadmm-report-test", "--run-id", RUN)
    assert result.exit_code == 0, result.output
    for name in FIGURES:
        check_png(memory.cat(f"/memadmm-report-test/runs/{RUN}/report/{name}"))
    assert RUN in memory.cat(f"/memadmm-report-test/runs/{RUN}/report/summary.md").decode()


def test_an_estimate_run_gets_the_figures_its_tables_allow(root, tmp_path):
    result = CliRunner().invoke(main, ["estimate", "--model", "mlp", "--compression", "4", "--run-id", "est",
                                       "--set", f"output.root={root}"])
    assert result.exit_code == 0, result.output
    result = report(root, "--run-id", "est", "--out", str(tmp_path / "est"))
    assert result.exit_code == 0, result.output
    assert "skipped tune.png" in result.output and "skipped montecarlo.png" in result.output
    for name in ("crossbars.png", "power_area.png"):
        check_png((tmp_path / "est" / name).read_bytes())
    assert not (tmp_path / "est" / "tune.png").exists()
    text = (tmp_path / "est" / "summary.md").read_text()
    assert "`tune.png` skipped" in text and "`montecarlo.png` skipped" in text and "estimate" in text
    s = read_table(root, "summary", "est").iloc[0]
    h = headline(text)
    assert h["final test accuracy"][0] == "n/a"
    agrees(h["power reduction"][0], 100 * s["power_reduction"])


def one_line_exit_2(result, *named):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0
    for text in named:
        assert text in result.output, (text, result.output)


def test_an_unknown_run_id_is_refused_naming_the_runs_there(root):
    one_line_exit_2(report(root, "--run-id", "no-such-run"), "--run-id", "no-such-run", RUN)


def test_a_root_without_tables_is_refused(tmp_path):
    one_line_exit_2(report(str(tmp_path), "--run-id", RUN), "ROOT", str(tmp_path))


def test_a_run_without_a_summary_is_refused_with_its_status(tmp_path):
    write_table(str(tmp_path), "runs", "crashed", [{"created_at": pd.Timestamp.now(tz="UTC"), "status": "failed",
                                                    "seed": 0, "config_hash": "", "config": "{}",
                                                    "package_versions": "{}", "preset": "quick"}], {})
    one_line_exit_2(report(str(tmp_path), "--run-id", "crashed"), "--run-id", "crashed", "failed")


def test_report_needs_a_run_id():
    result = report("results")
    assert result.exit_code == 2 and "--run-id" in result.output

