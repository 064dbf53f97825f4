"""Config validation: presets load, overrides apply, bad values name field and value."""

import pytest

from pipeline.config import Config, load_config, presets
from pipeline.errors import ConfigError


def test_presets_load_and_round_trip(tmp_path):
    assert "quick" in presets()
    for name in presets():
        cfg = load_config(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(cfg.to_yaml())
        again = load_config(str(path))
        assert again == cfg and again.hash() == cfg.hash()


def test_overrides_apply_in_order_and_change_the_hash():
    base = load_config("quick")
    cfg = load_config("quick", ["admm.epochs=3", "mapping.weight_bits=6", "admm.epochs=4"])
    assert cfg.admm.epochs == 4 and cfg.mapping.weight_bits == 6
    assert cfg.hash() != base.hash()


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.seed = 3


@pytest.mark.parametrize("override, field, value", [
    ("admm.layers.fc1.filter=1.5", "admm.layers.fc1.filter", "1.5"),
    ("mapping.weight_bits=0", "mapping.weight_bits", "0"),
    ("mapping.g_min_us=200", "mapping", "200"),
    ("model.name=resnet", "model.name", "resnet"),
    ("admm.epochs=abc", "admm.epochs", "abc"),
    ("montecarlo.scenarios=[{id: a, p_sa0: 2}]", "montecarlo.scenarios.0.p_sa0", "2"),
    ("tune.ratios.fc1.filter=[0.9, 0.1]", "tune", "0.9"),
    ("data.unknown=1", "data.unknown", "1"),
    ("hardware.preset=neurosim", "hardware.preset", "neurosim"),
])
def test_bad_values_name_field_value_and_allowed(override, field, value):
    with pytest.raises(ConfigError) as err:
        load_config("quick", [override])
    message = str(err.value)
    assert field in message and value in message


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="quick"):
        load_config("no-such-preset")


def test_malformed_override():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config("quick", ["admm.epochs"])
