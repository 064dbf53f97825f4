"""The whole pipeline on Ray with tiny settings: the tables and their invariants."""

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.tables import SCHEMAS, TABLES
from stages.mapping import MappedNetwork
from stages.montecarlo import Scenario, run_trials
from pipeline import steps

TINY = [
    "tune.early_stopping=none", "admm.compare_magnitude=true", "model.hidden=[32, 32]", "pretrain.epochs=8", "admm.epochs=3", "admm.rho_every=1",
    "admm.target_compression=4", "tune.num_samples=2", "tune.grace_period=1",
    "retrain.epochs=2", "mapping.xbar_rows=16", "mapping.xbar_cols=16",
    "montecarlo.trials=4", "montecarlo.chunk_size=3",
    "montecarlo.scenarios=[{id: s0, variation: lognormal, sigma: 0.0}, "
    "{id: s1, variation: lognormal, sigma: 0.2}, {id: saf, p_sa0: 0.02, p_sa1: 0.02}]",
]


def tiny(root: str, table: str) -> pd.DataFrame:
    frame = pd.read_parquet(f"{root}/tables/{table}")
    return frame[frame.run_id == "tiny"].reset_index(drop=True)


def invoke_run(root: str, run_id: str, extra=()):
    args = ["run", "--run-id", run_id, "--quiet", "--set", f"output.root={root}"]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("results"))
    return root, invoke_run(root, "tiny")


def test_a_fixed_seed_gives_the_same_tables(run):
    root, _ = run
    invoke_run(root, "tiny-again")
    for table, keys in (("montecarlo", ["scenario_id", "trial"]), ("accuracy", ["stage", "split"]),
                        ("layers", ["variant", "layer"]), ("summary", [])):
        frame = pd.read_parquet(f"{root}/tables/{table}")
        a, b = (frame[frame.run_id == r].drop(columns="run_id").reset_index(drop=True) for r in ("tiny", "tiny-again"))
        if keys:
            a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b)


def test_every_table_reads_with_pandas_and_matches_its_schema(run):
    root, _ = run
    for table in TABLES:
        frame = pd.read_parquet(f"{root}/tables/{table}")
        assert "tiny" in set(frame["run_id"].astype(str))
        assert set(SCHEMAS[table].names) <= set(frame.columns), table


def test_one_row_per_rules(run):
    root, _ = run
    t = lambda name: tiny(root, name)
    assert len(t("runs")) == 1 and t("runs")["status"].item() == "succeeded"
    assert len(t("summary")) == 1
    acc = t("accuracy")
    assert sorted(acc["stage"].unique()) == ["admm", "magnitude", "magnitude-mapped", "magnitude-retrain",
                                             "mapped", "pretrain", "retrain"]
    assert not acc.duplicated(["stage", "split"]).any()
    layers = t("layers")
    assert set(layers["variant"]) == {"dense", "compressed"} and len(layers) == 2 * 3
    mc = t("montecarlo")
    assert len(mc) == 3 * 4 and not mc.duplicated(["scenario_id", "trial"]).any()
    tune = t("tune")
    assert tune["trial_id"].nunique() == 2
    assert len(tune) == 2 * tune["layer"].nunique()      # a row per trial and layer
    assert tune.groupby("trial_id")["chosen"].first().sum() == 1
    assert {"rho", "filter_ratio", "shape_ratio"} <= set(tune.columns)


def test_summary_invariants(run):
    root, output = run
    s = tiny(root, "summary").iloc[0]
    assert 0 < s["crossbars_compressed"] < s["crossbars_dense"]
    assert 0 < s["power_reduction"] < 1 and 0 < s["area_reduction"] < 1
    for key in ("baseline_accuracy", "final_accuracy"):
        assert 0 <= s[key] <= 1
    assert s["weight_compression"] > 1
    assert s["admm_gain"] == pytest.approx(s["final_accuracy"] - s["magnitude_accuracy"])
    hardware = tiny(root, "hardware")
    dense = hardware[hardware.variant == "dense"]["power_mw"].sum()
    assert s["power_dense_mw"] == pytest.approx(dense)
    assert [m["scenario_id"] for m in s["montecarlo"]] == ["s0", "s1", "saf"]
    assert "weight compression" in output and "mW" in output


def test_noise_free_scenario_reproduces_mapped_accuracy_and_seeds_rerun(run):
    root, _ = run
    mc = tiny(root, "montecarlo")
    acc = tiny(root, "accuracy")
    retrained = acc[(acc.stage == "retrain") & (acc.split == "test")]["accuracy"].item()
    assert (mc[mc.scenario_id == "s0"]["accuracy"] == retrained).all()
    # re-run one noisy trial alone from its stored seed, from the stored artifact
    row = mc[mc.scenario_id == "s1"].iloc[2]
    plain = torch.load(f"{root}/runs/tiny/artifacts/retrain.pt", map_location="cpu", weights_only=True)
    cfg = load_config(f"{root}/runs/tiny/config.yaml")
    data = steps.data_for(cfg)
    again = run_trials(steps.template_for(cfg, data), MappedNetwork.from_plain(plain), steps.spec_for(cfg),
                       Scenario("s1", "lognormal", 0.2), [int(row["seed"])], data.x_test, data.y_test)
    assert again == [row["accuracy"]]


def test_manifest_and_query(run):
    root, _ = run
    manifest = json.load(open(f"{root}/runs/tiny/manifest.json"))
    assert manifest["status"] == "succeeded"
    assert set(manifest["stages"]) == {"pretrain", "admm", "map", "retrain", "magnitude",
                                         "montecarlo", "tables"}
    result = CliRunner().invoke(main, ["query", root, "--table", "montecarlo", "--run-id", "tiny", "--where", "sigma > 0",
                                       "--format", "json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert len(rows) == 4 and all(r["sigma"] == 0.2 for r in rows)


def test_user_errors_exit_2_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--set", "mapping.weight_bits=0"])
    assert result.exit_code == 2 and "mapping.weight_bits" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["query", str(tmp_path), "--table", "summary"])
    assert result.exit_code == 2 and "memadmm run" in result.output
    result = runner.invoke(main, ["run", "--set", "admm.layers={fc9: {filter: 0.5}}"])
    assert result.exit_code == 2 and "fc9" in result.output
