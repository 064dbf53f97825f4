"""Write docs/reproduction.md: the seed's table held against ours, and ADMM against magnitude pruning.

    python docs/make_reproduction.py [--seeds 5]

Part 1 (seconds): `memadmm estimate`'s model for VGG-16 and ResNet-18 on CIFAR-10
at the seed's weight compression, against the seed's power and area reductions.
Part 2 (about half a minute per seed on 2 CPUs): the quick preset's compression,
ADMM against one-shot magnitude pruning at the same ratios and training budget,
in-process (no Ray, no Tune: the ratios are the preset's default point).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from pipeline import steps
from pipeline.config import load_config
from pipeline.estimate import estimate, template_of
from pipeline.results import layers_and_hardware, summary_row
from stages.models import crossbar_layers, gemm

OUT = Path(__file__).with_name("reproduction.md")
SEED = {  # Yuan et al., ISLPED 2019 (../shared/reference/paper-results.md)
    "vgg16": {"compression": 29.81, "power": 0.9838, "area": 0.9829, "loss": 0.50},
    "resnet18": {"compression": 20.88, "power": 0.9696, "area": 0.9747, "loss": 0.76},
}
PRESET = {"vgg16": "vgg16-cifar10", "resnet18": "resnet18-cifar10"}


def profile_keep(model: torch.nn.Module, compression: float) -> dict[str, float]:
    """Per-layer profile: keep_i = min(1, c / sqrt(weights_i)), c found by bisection so that the
    kept weights total 1/compression (small, sensitive layers keep more; the big late ones less)."""
    sizes = {n: gemm(m.weight).numel() for n, m in crossbar_layers(model).items()}
    total = sum(sizes.values())
    low, high = 0.0, max(math.sqrt(s) for s in sizes.values())
    for _ in range(100):
        c = (low + high) / 2
        kept = sum(min(1.0, c / math.sqrt(s)) * s for s in sizes.values())
        low, high = (c, high) if kept < total / compression else (low, c)
    return {n: min(1.0, c / math.sqrt(s)) for n, s in sizes.items()}


def estimate_rows(model_name: str) -> tuple[list[str], str]:
    target = SEED[model_name]
    rows, components = [], ""
    settings = [("uniform", "filter+shape", 8, ("crossbar",)), ("uniform", "block", 8, ("crossbar",)),
                ("profile", "filter+shape", 8, ("crossbar",)), ("uniform", "filter+shape", 4, ("crossbar",)),
                ("uniform", "filter+shape", 8, ("crossbar", "ima", "tile"))]
    for keep_kind, structure, bits, scopes in settings:
        cfg = load_config(PRESET[model_name], [f"mapping.weight_bits={bits}",
                                               f"hardware.scopes={list(scopes)}"])
        model = template_of(cfg)
        keep = profile_keep(model, target["compression"]) if keep_kind == "profile" else None
        layers, hardware, s = estimate(cfg, model=model, structure=structure,
                                       compression=None if keep else target["compression"], keep=keep)
        rows.append(f"| {keep_kind} | {structure} | {bits} | {'+'.join(scopes)} | {s['weight_compression']:.2f}x "
                    f"| {s['crossbars_dense']} -> {s['crossbars_compressed']} "
                    f"| {100 * s['power_reduction']:.2f} % ({100 * (s['power_reduction'] - target['power']):+.2f}) "
                    f"| {100 * s['area_reduction']:.2f} % ({100 * (s['area_reduction'] - target['area']):+.2f}) |")
        if (keep_kind, structure, bits, scopes) == settings[-1]:
            components = component_table(hardware)
    return rows, components


def component_table(hardware: list[dict]) -> str:
    by = {}
    for r in hardware:
        d = by.setdefault(r["component"], {"scope": r["scope"], "dense": [0.0, 0.0], "compressed": [0.0, 0.0]})
        d[r["variant"]][0] += r["power_mw"]
        d[r["variant"]][1] += r["area_mm2"]
    lines = ["| component | scope | power dense -> compressed (mW) | reduction | area dense -> compressed (mm2) | reduction |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, d in by.items():
        (pd_, ad), (pc, ac) = d["dense"], d["compressed"]
        lines.append(f"| {name} | {d['scope']} | {pd_:.1f} -> {pc:.1f} | {100 * (1 - pc / pd_):.2f} % "
                     f"| {ad:.4f} -> {ac:.4f} | {100 * (1 - ac / ad):.2f} % |")
    return "\n".join(lines)


def compress(cfg, data, state, method: str) -> dict:
    """One in-process compression at the preset's default ratios -> its summary row."""
    ratios = steps.default_ratios(cfg)
    if method == "admm":
        projected, masks, _ = steps.run_admm(cfg, data, state, rho=cfg.admm.rho, ratios=ratios)
        mapped, rows = steps.run_map(cfg, data, projected, masks, ratios)
        final, retrain_rows = steps.run_retrain(cfg, data, mapped)
        rows += retrain_rows
    else:
        final, rows = steps.run_magnitude_baseline(cfg, data, state, ratios)
        rows = [{**r, "stage": r["stage"].replace("magnitude-retrain", "retrain")} for r in rows]
    return rows, final


def admm_vs_magnitude(seeds: int) -> list[str]:
    lines, gains = [], []
    for seed in range(seeds):
        cfg = load_config("quick", [f"seed={seed}"])
        data = steps.data_for(cfg)
        state, pre_rows = steps.run_pretrain(cfg, data)
        results = {}
        for method in ("admm", "magnitude"):
            rows, final = compress(cfg, data, state, method)
            layers, hardware = layers_and_hardware(cfg, final)
            results[method] = summary_row(cfg, pre_rows + rows, layers, hardware, [])
        a, m = results["admm"], results["magnitude"]
        gains.append(100 * (a["final_accuracy"] - m["final_accuracy"]))
        lines.append(f"| {seed} | {100 * a['baseline_accuracy']:.2f} % | {100 * a['final_accuracy']:.2f} % "
                     f"({a['weight_compression']:.1f}x) | {100 * m['final_accuracy']:.2f} % "
                     f"({m['weight_compression']:.1f}x) | {gains[-1]:+.2f} |")
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    lines.append(f"| mean | | | | **{statistics.mean(gains):+.2f}** (std {spread:.2f}, min {min(gains):+.2f}, "
                 f"max {max(gains):+.2f}) |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    parts = [HEADER.format(date=dt.date.today().isoformat(), python=platform.python_version(),
                           torch=torch.__version__)]
    for model_name in ("vgg16", "resnet18"):
        rows, components = estimate_rows(model_name)
        t = SEED[model_name]
        parts.append(ESTIMATE.format(model=model_name, c=t["compression"], p=100 * t["power"], a=100 * t["area"],
                                     rows="\n".join(rows), components=components))
    parts.append(GAP)
    parts.append(MAGNITUDE.format(seeds=args.seeds, rows="\n".join(admm_vs_magnitude(args.seeds))))
    parts.append(f"\n_Generated by `python docs/make_reproduction.py --seeds {args.seeds}` in "
                 f"{time.perf_counter() - started:.0f} s._\n")
    OUT.write_text("\n".join(parts))
    print(f"wrote {OUT}")


HEADER = """# Reproduction: the seed's table, and what ADMM buys

Measured {date} on the 2-CPU development machine (no GPU), Python {python}, torch {torch}.
Every figure below is produced by `docs/make_reproduction.py`; do not edit by hand.

## 1. VGG-16 and ResNet-18 on CIFAR-10: crossbars, power and area

`memadmm estimate` maps the network at the seed's weight compression
(Yuan et al., ISLPED 2019) and prices it with the ISAAC table
(`hardware/isaac.csv`, 32 nm, 128x128 crossbars, 2-bit cells, one 8-bit ADC per
crossbar). Dense baseline: the same network at 16-bit weights (8 slices x 2
devices per weight), no pruning. Compressed: 8-bit weights (4 slices x 2),
unless the row says otherwise. Pruned structures are chosen by the L2 norms
of the initial weights: only their counts matter for the cost. *uniform*: every
layer keeps 1/compression of its weights (filter+shape: sqrt of that in filters
where the graph allows it, the rest in input columns, see `pipeline/estimate.py`);
*profile*: layer i keeps min(1, c/sqrt(weights_i)) with c set to hit the same
total, so small sensitive layers keep more. Differences to the seed are in
points, in brackets.
"""

ESTIMATE = """
### {model}: seed {c}x, power -{p:.2f} %, area -{a:.2f} %

| keep | structure | weight bits | scopes counted | weight compression | crossbars | power reduction | area reduction |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Component by component, uniform filter+shape at 8 bits with every scope counted:

{components}
"""

GAP = """
### Where the gap comes from

- **Fragmentation** (the whole gap for the default setting): with filter and
  shape pruning the kept rows and columns are compacted, but every layer still
  rounds up to whole 128x128 tiles, so crossbars fall by less than the weights
  do. Block pruning removes whole tiles and has no such loss; it lands on or
  above the seed's reductions at a slightly higher weight compression, because
  partial edge tiles are the first to go.
- **Bit slices**: 16-bit to 8-bit weights halves the slices (8 to 4 per
  polarity), the seed's "about 2x the weight compression". 4-bit weights halve
  them again (2 slices), which is why the 4-bit rows pass the seed.
- **Power against area**: in the crossbar scope every component scales with the
  crossbar count, so power and area fall by the same fraction. The seed's two
  figures differ by 0.09 (VGG-16) and 0.51 (ResNet-18) points, which implies
  components that do not scale with crossbars. Counting ISAAC's IMA registers
  and tile eDRAM, bus and router (the last row of each table) brings such
  shared components in; they round up per layer, so they lower both reductions.
- With the default setting (uniform filter+shape, 8-bit, crossbar scope) both
  networks land within 2 points of the seed's power and area reductions.
"""

MAGNITUDE = """
## 2. ADMM against one-shot magnitude pruning, quick preset (digits MLP)

Same pretrained model, same structured ratios (the preset's default point:
fc1 filter 0.85 and shape 0.2, fc2 filter 0.85), same 4-bit quantization and
mapping. ADMM: 30 ADMM epochs, then 120 epochs of masked retraining. Magnitude:
the L2-norm projection of the pretrained weights onto the same sets, then
150 epochs of masked retraining (the same training budget). Test accuracy on
the 360-image test split, weight compression in brackets; {seeds} seeds (the
seed sets initialisation and data order; the split is fixed). Both methods keep
exactly the same rows and columns (the same structured compression, 22.5x of
kept weights); the bracketed compression counts non-zero weights, and ADMM's is
higher because its regularized training drives more kept weights onto the zero
level, which masked retraining then keeps at zero for both methods.

| seed | dense baseline | ADMM | magnitude | ADMM gain (points) |
| --- | --- | --- | --- | --- |
{rows}
"""


if __name__ == "__main__":
    main()
