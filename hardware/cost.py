"""Power and area of mapped crossbars, from per-component tables shipped as CSV (each row cites its source).

A row's `scope` is the unit it is counted per (crossbar, ima, tile); `instances`
is how many per unit (a number, or `rows` / `cols` = the spec's wordlines /
bitlines per crossbar); `power_mw` and `area_mm2` are per instance; `scale`
`cells` marks figures given for a 128x128 array, scaled by rows*cols/16384.
"""

import csv
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources

from hardware import checks
from hardware.errors import HardwareError
from hardware.spec import MappingSpec

SCOPES = ("crossbar", "ima", "tile")
SCALES = ("none", "cells")
PER_CROSSBAR = ("rows", "cols")
FIGURES = ("power_mw", "area_mm2")
COLUMNS = ["component", "scope", "instances", "power_mw", "area_mm2", "scale", "source"]
REFERENCE_CELLS = 128 * 128  # array figures of both presets are for 128x128 crossbars

HIERARCHY = {
    "isaac": {"crossbars_per_ima": 8, "imas_per_tile": 12,
              "source": "ISAAC (Shafiee et al., ISCA 2016): 8 crossbars per IMA, 12 IMAs per tile"},
    "puma": {"crossbars_per_ima": 8, "imas_per_tile": 12,
             "source": "ISAAC figure used: ISAAC (Shafiee et al., ISCA 2016) 8 crossbars per IMA, 12 IMAs per tile"},
}
PRESETS = tuple(HIERARCHY)


@dataclass(frozen=True)
class Component:
    """One row of a cost table: a peripheral or the array, per instance."""

    name: str
    scope: str                # "crossbar", "ima" or "tile": the unit it is counted per
    instances: float | str    # per unit: a number, or "rows" / "cols" of the crossbar
    power_mw: float           # per instance, milliwatts
    area_mm2: float           # per instance, square millimetres
    scale: str                # "none", or "cells": scaled by xbar_rows * xbar_cols / 16384
    source: str               # paper, table and what was derived


@dataclass(frozen=True)
class CostTable:
    """A preset's components and its crossbar -> IMA -> tile hierarchy."""

    preset: str
    components: tuple[Component, ...]
    crossbars_per_ima: int
    imas_per_tile: int


def _number(where: str, field: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HardwareError(f"{where} {field}: got {text!r}; allowed: a number >= 0") from None
    return checks.finite_float(f"{where} {field}", value, 0.0)


def _component(where: str, row: dict) -> Component:
    if row["scope"] not in SCOPES:
        raise HardwareError(f"{where} scope: got {row['scope']!r}; allowed: {', '.join(SCOPES)}")
    if row["scale"] not in SCALES:
        raise HardwareError(f"{where} scale: got {row['scale']!r}; allowed: {', '.join(SCALES)}")
    instances = row["instances"]
    if instances in PER_CROSSBAR:
        if row["scope"] != "crossbar":
            raise HardwareError(f"{where} instances: got {instances!r} with scope {row['scope']!r}; "
                                "allowed: rows / cols only with scope 'crossbar'")
    else:
        instances = _number(where, "instances", instances)
    if not row["source"].strip():
        raise HardwareError(f"{where} source: got an empty source; allowed: a citation")
    return Component(row["component"], row["scope"], instances, _number(where, "power_mw", row["power_mw"]),
                     _number(where, "area_mm2", row["area_mm2"]), row["scale"], row["source"])


@functools.lru_cache(maxsize=None)
def _preset_components(preset: str) -> tuple[Component, ...]:
    """The rows of hardware/<preset>.csv, validated."""
    name = f"{preset}.csv"
    with resources.files("hardware").joinpath(name).open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != COLUMNS:
            raise HardwareError(f"{name} header: got {reader.fieldnames}; allowed: {COLUMNS}")
        components = tuple(_component(f"{name} line {i}", row) for i, row in enumerate(reader, start=2))
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise HardwareError(f"{name} component: got duplicates in {names}; allowed: unique names")
    return components


def _override(component: Component, figures) -> Component:
    if not isinstance(figures, Mapping):
        raise HardwareError(f"overrides[{component.name!r}]: got {figures!r}; allowed: a mapping of "
                            f"{' / '.join(FIGURES)} to numbers")
    unknown = sorted(set(figures) - set(FIGURES), key=str)
    if unknown:
        raise HardwareError(f"overrides[{component.name!r}]: got field {unknown[0]!r}; allowed: {', '.join(FIGURES)}")
    values = {f: checks.finite_float(f"overrides[{component.name!r}][{f!r}]", v, 0.0) for f, v in figures.items()}
    said = ", ".join(f"{f}={v:g}" for f, v in values.items())
    return replace(component, **values, source=f"config override ({said}); preset row: {component.source}")


def load_cost_table(preset: str = "isaac",
                    overrides: Mapping[str, Mapping[str, float]] | None = None) -> CostTable:
    """The preset's cost table ("isaac" or "puma"), with per-instance figures replaced by `overrides`.

    overrides: {component: {"power_mw": x, "area_mm2": y}}, either field optional.
    """
    if preset not in HIERARCHY:
        raise HardwareError(f"preset: got {preset!r}; allowed: {', '.join(PRESETS)}")
    components = _preset_components(preset)
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, Mapping):
        raise HardwareError(f"overrides: got {overrides!r}; allowed: a mapping of component -> figures")
    names = [c.name for c in components]
    unknown = sorted(set(overrides) - set(names), key=str)
    if unknown:
        raise HardwareError(f"overrides: got component {unknown[0]!r}; allowed: {', '.join(names)}")
    components = tuple(_override(c, overrides[c.name]) if c.name in overrides else c for c in components)
    h = HIERARCHY[preset]
    return CostTable(preset, components, h["crossbars_per_ima"], h["imas_per_tile"])


def layer_cost(crossbars: int, spec: MappingSpec, table: CostTable,
               scopes: Sequence[str] = ("crossbar",)) -> list[dict]:
    """Cost rows of `crossbars` physical arrays: one dict per component whose scope is in `scopes`.

    Units: crossbar scope -> crossbars; ima -> ceil(crossbars / crossbars_per_ima);
    tile -> ceil(imas / imas_per_tile). count = instances * units; power_mw and
    area_mm2 = count * per-instance figure * cell scale.
    Keys: component, scope, count, power_mw, area_mm2, source.
    """
    crossbars = checks.int_at_least("crossbars", crossbars, 0)
    if not isinstance(spec, MappingSpec):
        raise HardwareError(f"spec: got {type(spec).__name__}; allowed: a MappingSpec")
    if not isinstance(table, CostTable):
        raise HardwareError(f"table: got {type(table).__name__}; allowed: a CostTable (load_cost_table)")
    if isinstance(scopes, str) or not isinstance(scopes, Sequence) or not set(scopes) <= set(SCOPES):
        raise HardwareError(f"scopes: got {scopes!r}; allowed: a sequence drawn from {', '.join(SCOPES)}")
    imas = math.ceil(crossbars / table.crossbars_per_ima)
    units = {"crossbar": crossbars, "ima": imas, "tile": math.ceil(imas / table.imas_per_tile)}
    per_crossbar = {"rows": spec.xbar_rows, "cols": spec.xbar_cols}
    cell_scale = spec.xbar_rows * spec.xbar_cols / REFERENCE_CELLS
    rows = []
    for c in table.components:
        if c.scope not in scopes:
            continue
        count = per_crossbar.get(c.instances, c.instances) * units[c.scope]
        scale = cell_scale if c.scale == "cells" else 1.0
        rows.append({"component": c.name, "scope": c.scope, "count": float(count),
                     "power_mw": count * c.power_mw * scale, "area_mm2": count * c.area_mm2 * scale,
                     "source": c.source})
    return rows


def per_crossbar_cost(spec: MappingSpec, table: CostTable) -> tuple[float, float]:
    """(power_mw, area_mm2) of one crossbar with its crossbar-scope peripherals."""
    rows = layer_cost(1, spec, table, ("crossbar",))
    return sum(r["power_mw"] for r in rows), sum(r["area_mm2"] for r in rows)
