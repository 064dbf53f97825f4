"""Rows of the layers, hardware and summary tables, from a mapping and its accuracies."""

from __future__ import annotations

import numpy as np

from hardware import layer_cost
from pipeline.config import Config
from pipeline.steps import cost_table_for, spec_for
from stages.mapping import MappedNetwork, layer_rows

FLOAT_BITS = 32   # storage of a dense weight, bits (float32)
SCALE_BITS = 32   # storage of one per-layer scale alpha, bits


def layers_and_hardware(cfg: Config, mapped: MappedNetwork) -> tuple[list[dict], list[dict]]:
    """`layers` rows (dense and compressed) and the `hardware` rows that cost them."""
    spec = spec_for(cfg)
    table = cost_table_for(cfg)
    layers = layer_rows(mapped, spec, cfg.hardware.baseline_weight_bits)
    hardware = []
    for row in layers:
        s = spec.with_weight_bits(row["weight_bits"])
        for cost in layer_cost(row["crossbars"], s, table, cfg.hardware.scopes):
            hardware.append({"variant": row["variant"], "layer": row["layer"],
                             "preset": table.preset, **cost})
    return layers, hardware


def storage_bits(layers: list[dict]) -> tuple[int, int]:
    """(dense bits, compressed bits): float32 dense weights against the kept crossbar block
    at weight_bits, plus one bit per row and column for the masks and a 32-bit scale."""
    dense = sum(r["weights"] * FLOAT_BITS for r in layers if r["variant"] == "dense")
    compressed = sum(r["kept_out"] * r["kept_in"] * r["weight_bits"] + r["gemm_out"] + r["gemm_in"]
                     + SCALE_BITS for r in layers if r["variant"] == "compressed")
    return dense, compressed


def montecarlo_stats(rows: list[dict]) -> list[dict]:
    """Mean, std (ddof=1) and 5th percentile of accuracy per scenario, in scenario order."""
    order = list(dict.fromkeys(r["scenario_id"] for r in rows))
    stats = []
    for sid in order:
        mine = [r for r in rows if r["scenario_id"] == sid]
        acc = np.array([r["accuracy"] for r in mine], dtype=np.float64)
        first = mine[0]
        stats.append({"scenario_id": sid, **{k: first[k] for k in ("variation", "sigma", "p_sa0", "p_sa1",
                                                                   "read_noise", "drift_nu", "adc_bits")},
                      "trials": len(acc),
                      "mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                      "p5": float(np.percentile(acc, 5))})
    return stats


def cost_summary(cfg: Config, layers: list[dict], hardware: list[dict]) -> dict:
    """Weights, bits, crossbars, power and area, dense against compressed."""
    def total(rows, variant, key):
        return sum(r[key] for r in rows if r["variant"] == variant)

    dense_bits, compressed_bits = storage_bits(layers)
    power_dense, power_comp = total(hardware, "dense", "power_mw"), total(hardware, "compressed", "power_mw")
    area_dense, area_comp = total(hardware, "dense", "area_mm2"), total(hardware, "compressed", "area_mm2")
    return {
        "weight_compression": total(layers, "dense", "weights") / max(total(layers, "compressed", "nonzeros"), 1),
        "weight_bits": cfg.mapping.weight_bits, "baseline_weight_bits": cfg.hardware.baseline_weight_bits,
        "storage_compression": dense_bits / compressed_bits,
        "crossbars_dense": total(layers, "dense", "crossbars"),
        "crossbars_compressed": total(layers, "compressed", "crossbars"),
        "power_dense_mw": power_dense, "power_compressed_mw": power_comp,
        "power_reduction": 1 - power_comp / power_dense,
        "area_dense_mm2": area_dense, "area_compressed_mm2": area_comp,
        "area_reduction": 1 - area_comp / area_dense,
    }


def summary_row(cfg: Config, accuracy: list[dict], layers: list[dict], hardware: list[dict],
                montecarlo: list[dict], model_name: str | None = None) -> dict:
    def test_acc(stage: str) -> float | None:
        return next((r["accuracy"] for r in accuracy if r["stage"] == stage and r["split"] == "test"), None)

    baseline, final, magnitude = test_acc("pretrain"), test_acc("retrain"), test_acc("magnitude-retrain")
    return {
        "model": model_name or cfg.model.name, "dataset": cfg.data.name, "method": cfg.admm.method,
        "baseline_accuracy": baseline, "final_accuracy": final,
        "accuracy_loss": None if baseline is None or final is None else baseline - final,
        "magnitude_accuracy": magnitude,
        "admm_gain": None if magnitude is None or final is None else final - magnitude,
        **cost_summary(cfg, layers, hardware),
        "montecarlo": montecarlo_stats(montecarlo),
    }
