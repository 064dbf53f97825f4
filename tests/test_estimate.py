"""`memadmm estimate`: the seed's VGG-16 / ResNet-18 figures and the command's contract."""

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main

KEYS = {"crossbars_dense", "crossbars_compressed", "power_dense_mw", "power_compressed_mw",
        "area_dense_mm2", "area_compressed_mm2", "power_reduction", "area_reduction", "weight_compression"}


def estimate(*args):
    result = CliRunner().invoke(main, ["estimate", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("model, compression, power, area", [
    ("vgg16", 29.81, 0.9838, 0.9829),      # Yuan et al., ISLPED 2019, VGG-16 on CIFAR-10
    ("resnet18", 20.88, 0.9696, 0.9747),   # same paper, ResNet-18
])
def test_seed_reductions_within_two_points_at_8_bits(tmp_path, model, compression, power, area):
    out = estimate("--model", model, "--compression", str(compression), "--weight-bits", "8",
                   "--format", "json", "--set", f"output.root={tmp_path}")
    assert KEYS <= set(out)
    assert out["weight_compression"] == pytest.approx(compression, rel=0.01)
    assert abs(out["power_reduction"] - power) <= 0.02
    assert abs(out["area_reduction"] - area) <= 0.02
    assert out["crossbars_dense"] == {"vgg16": 14496, "resnet18": 11168}[model]   # hand-worked in test_zoo
    layers = pd.read_parquet(f"{tmp_path}/tables/layers")
    assert layers[layers.variant == "compressed"]["crossbars"].sum() == out["crossbars_compressed"]
    summary = pd.read_parquet(f"{tmp_path}/tables/summary")
    assert summary["power_reduction"].item() == pytest.approx(out["power_reduction"])


def test_the_cascade_carries_filter_pruning_into_the_next_layer(tmp_path):
    estimate("--model", "vgg16", "--compression", "16", "--format", "json", "--set", f"output.root={tmp_path}")
    layers = pd.read_parquet(f"{tmp_path}/tables/layers").set_index(["variant", "layer"])
    conv2 = layers.loc[("compressed", "conv2")]
    conv3 = layers.loc[("compressed", "conv3")]
    assert conv3["kept_in"] <= 9 * conv2["kept_out"]       # only inputs fed by conv2's kept filters
    assert conv3["kept_in"] < conv3["kept_in_own"] or conv3["kept_in_own"] == conv3["kept_in"]


def test_block_structure_counts_surviving_tiles(tmp_path):
    out = estimate("--model", "vgg16", "--compression", "29.81", "--structure", "block", "--format", "json",
                   "--no-write")
    dense = estimate("--model", "vgg16", "--compression", "29.81", "--format", "json", "--no-write")
    assert out["crossbars_compressed"] < dense["crossbars_compressed"]   # no ceil fragmentation
    assert out["crossbars_compressed"] % 8 == 0                          # 4 slices x 2 devices per tile


def test_keep_fractions_and_checkpoints(tmp_path):
    from pipeline.config import load_config
    from pipeline.estimate import template_of

    model = template_of(load_config("lenet5-mnist"))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict()}, path)
    out = estimate("--model", "lenet5", "--checkpoint", str(path), "--keep", "fc1=0.05", "--format", "json",
                   "--no-write")
    # fc1 (500 x 800) keeps round(sqrt(0.05) * 500) = 112 filters and round(0.05 * 500 * 800 / 112) = 179
    # columns; its pruned filters also remove fc2's inputs (10 x 112 left); conv1, conv2 untouched
    kept = 500 + 25000 + 112 * 179 + 10 * 112
    assert out["weight_compression"] == pytest.approx(430500 / kept)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    for args in (["--checkpoint", str(bad), "--compression", "10"], ["--keep", "fc9=0.5"],
                 ["--compression", "0.5"], ["--keep", "fc1"]):
        result = CliRunner().invoke(main, ["estimate", "--model", "lenet5", "--no-write", *args])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
