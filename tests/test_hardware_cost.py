"""Cost tables: ISAAC's per-crossbar figures, counting by scope, scaling, overrides and sources."""

import math

import pytest

from hardware import Component, CostTable, HardwareError, MappingSpec, layer_cost, load_cost_table, per_crossbar_cost

# ../shared/reference/paper-results.md, "Crossbar accelerator cost figures" (ISAAC, ISCA 2016):
# per crossbar with its share of peripherals about 2.83 mW and 0.00128 mm2; ADC about 71% / 94% of them.
ISAAC_PER_CROSSBAR_MW, ISAAC_PER_CROSSBAR_MM2 = 2.83, 0.00128
ISAAC_ADC_POWER_SHARE, ISAAC_ADC_AREA_SHARE = 0.71, 0.94


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["component"]: r for r in rows}


def test_isaac_per_crossbar_matches_the_paper():
    spec, table = MappingSpec(), load_cost_table("isaac")
    power, area = per_crossbar_cost(spec, table)
    assert power == pytest.approx(2.82625, rel=1e-9) and area == pytest.approx(0.00128125, rel=1e-9)
    assert power == pytest.approx(ISAAC_PER_CROSSBAR_MW, rel=0.005)
    assert area == pytest.approx(ISAAC_PER_CROSSBAR_MM2, rel=0.005)
    adc = by_name(layer_cost(1, spec, table))["adc"]
    assert adc["power_mw"] / power == pytest.approx(ISAAC_ADC_POWER_SHARE, rel=0.005)
    assert adc["area_mm2"] / area == pytest.approx(ISAAC_ADC_AREA_SHARE, rel=0.005)


@pytest.mark.parametrize("preset", ["isaac", "puma"])
def test_crossbar_scope_scales_linearly(preset):
    spec, table = MappingSpec(xbar_rows=64, xbar_cols=32), load_cost_table(preset)
    one = by_name(layer_cost(1, spec, table))
    assert {r["scope"] for r in one.values()} == {"crossbar"}
    for k in (0, 3, 17, 1000):
        rows = by_name(layer_cost(k, spec, table))
        assert rows.keys() == one.keys()
        for name, row in rows.items():
            for key in ("count", "power_mw", "area_mm2"):
                assert row[key] == pytest.approx(k * one[name][key], rel=1e-12, abs=0.0)


def test_ima_and_tile_units_round_up():
    spec, table = MappingSpec(), load_cost_table("isaac")
    rows = by_name(layer_cost(97, spec, table, ("crossbar", "ima", "tile")))
    assert table.crossbars_per_ima == 8 and table.imas_per_tile == 12
    assert rows["adc"]["count"] == 97 and rows["shift_add"]["count"] == 48.5
    assert rows["input_register"]["count"] == 13              # ceil(97 / 8)
    assert rows["edram"]["count"] == 2 and rows["router"]["count"] == 0.5  # ceil(13 / 12) tiles, router / 4
    assert rows["edram"]["power_mw"] == pytest.approx(2 * 20.7)
    assert by_name(layer_cost(97, spec, table, ("tile",))).keys() == {"edram", "bus", "router"}


def test_rows_and_cols_resolve_from_the_spec_and_cells_scale_the_array():
    table = load_cost_table("isaac")
    big = by_name(layer_cost(1, MappingSpec(), table))
    small = by_name(layer_cost(1, MappingSpec(xbar_rows=64, xbar_cols=32), table))
    assert small["dac"]["count"] == 64 and small["sample_hold"]["count"] == 32
    assert small["array"]["power_mw"] == pytest.approx(big["array"]["power_mw"] * 64 * 32 / 16384)
    assert small["array"]["area_mm2"] == pytest.approx(big["array"]["area_mm2"] / 8)
    assert small["adc"]["power_mw"] == big["adc"]["power_mw"]  # one ADC per crossbar whatever its size


def test_full_isaac_tile_is_close_to_the_paper():
    table = load_cost_table("isaac")
    rows = layer_cost(8 * 12, MappingSpec(), table, ("crossbar", "ima", "tile"))  # one full tile
    power = sum(r["power_mw"] for r in rows)
    area = sum(r["area_mm2"] for r in rows)
    assert power == pytest.approx(330, rel=0.02)   # router counted as a quarter
    assert area == pytest.approx(0.372, rel=0.02)


def test_puma_uses_its_own_figures_and_says_where_isaac_fills_in():
    table = load_cost_table("puma")
    rows = {c.name: c for c in table.components}
    assert rows["dac"].power_mw == 0.0039 and rows["dac"].area_mm2 == 1.67e-7
    assert rows["shift_add"].instances == 1 and rows["shift_add"].power_mw == 0.05
    for name in ("array", "sample_hold", "input_register", "output_register", "edram", "bus", "router"):
        assert rows[name].source.startswith("ISAAC figure used: PUMA gives none")
    for name in ("adc", "dac", "shift_add"):
        assert "PUMA (Ankit et al., ASPLOS 2019)" in rows[name].source


@pytest.mark.parametrize("preset", ["isaac", "puma"])
def test_every_row_is_well_formed_and_cited(preset):
    table = load_cost_table(preset)
    assert isinstance(table, CostTable) and table.preset == preset
    names = [c.name for c in table.components]
    assert len(names) == len(set(names)) == 10
    for c in table.components:
        assert isinstance(c, Component)
        assert c.scope in ("crossbar", "ima", "tile") and c.scale in ("none", "cells")
        assert c.instances in ("rows", "cols") or c.instances > 0
        assert math.isfinite(c.power_mw) and c.power_mw > 0 and c.area_mm2 > 0
        assert "ISAAC (Shafiee et al., ISCA 2016)" in c.source or "PUMA (Ankit et al., ASPLOS 2019)" in c.source


def test_overrides_replace_figures_and_say_so():
    base = load_cost_table("isaac")
    table = load_cost_table("isaac", {"adc": {"power_mw": 1.0}, "dac": {"power_mw": 0.0, "area_mm2": 2e-7}})
    rows, old = {c.name: c for c in table.components}, {c.name: c for c in base.components}
    assert rows["adc"].power_mw == 1.0 and rows["adc"].area_mm2 == old["adc"].area_mm2
    assert rows["dac"].power_mw == 0.0 and rows["dac"].area_mm2 == 2e-7
    assert rows["adc"].source.startswith("config override") and rows["dac"].source.startswith("config override")
    assert all(rows[n] == old[n] for n in rows if n not in ("adc", "dac"))
    power, _ = per_crossbar_cost(MappingSpec(), table)
    assert power == pytest.approx(2.82625 - 1.0 - 0.5)
    assert load_cost_table("isaac") == base  # the preset itself is untouched


@pytest.mark.parametrize("call, text", [
    (lambda: load_cost_table("aihwkit"), "preset: got 'aihwkit'; allowed: isaac, puma"),
    (lambda: load_cost_table("isaac", {"flux_capacitor": {"power_mw": 1.0}}), "component 'flux_capacitor'.*adc"),
    (lambda: load_cost_table("isaac", {"adc": {"energy_pj": 1.0}}), "field 'energy_pj'; allowed: power_mw, area_mm2"),
    (lambda: load_cost_table("isaac", {"adc": {"power_mw": -2.0}}), "power_mw.*got -2.0"),
    (lambda: layer_cost(-1, MappingSpec(), load_cost_table()), "crossbars: got -1"),
    (lambda: layer_cost(4, MappingSpec(), load_cost_table(), ("chip",)), r"scopes: got \('chip',\)"),
    (lambda: layer_cost(4, MappingSpec(), load_cost_table(), "crossbar"), "scopes: got 'crossbar'"),
    (lambda: layer_cost(4, MappingSpec(), "isaac"), "table: got str"),
])
def test_bad_inputs_name_the_value(call, text):
    with pytest.raises(HardwareError, match=text):
        call()
