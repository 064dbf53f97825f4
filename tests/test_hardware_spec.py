"""MappingSpec: derived counts and validation at construction."""

import dataclasses

import pytest

from hardware import HardwareError, MappingSpec


def test_defaults_and_derived_properties():
    spec = MappingSpec()
    assert (spec.xbar_rows, spec.xbar_cols, spec.weight_bits, spec.cell_bits) == (128, 128, 8, 2)
    assert spec.magnitude_bits == 7
    assert spec.max_level == 127
    assert spec.slices == 4          # ceil(7 / 2)
    assert spec.polarity == 2
    assert spec.sign_scheme == "differential" and spec.data_cols == 128
    assert spec.cell_levels == 4
    assert spec.g_step_us == pytest.approx(33.0)


@pytest.mark.parametrize("weight_bits, cell_bits, slices", [(16, 2, 8), (8, 2, 4), (4, 2, 2), (2, 2, 1),
                                                             (9, 4, 2), (5, 1, 4), (3, 8, 1)])
def test_slices_cover_the_magnitude_bits(weight_bits, cell_bits, slices):
    spec = MappingSpec(weight_bits=weight_bits, cell_bits=cell_bits)
    assert spec.slices == slices
    assert spec.slices * spec.cell_bits >= spec.magnitude_bits > (spec.slices - 1) * spec.cell_bits


@pytest.mark.parametrize("weight_bits, cell_bits, slices", [(16, 2, 8), (8, 2, 4), (7, 2, 4), (4, 2, 2),
                                                             (2, 2, 1), (2, 1, 2), (9, 4, 3), (8, 4, 2),
                                                             (5, 1, 5), (3, 8, 1)])
def test_offset_stores_every_bit_on_one_array(weight_bits, cell_bits, slices):
    spec = MappingSpec(weight_bits=weight_bits, cell_bits=cell_bits, sign_scheme="offset")
    assert spec.magnitude_bits == weight_bits and spec.polarity == 1 and spec.slices == slices
    assert spec.max_level == 2 ** (weight_bits - 1) - 1                  # same levels as differential
    assert 2 * spec.max_level < 2 ** spec.magnitude_bits <= 2 ** (spec.slices * spec.cell_bits)
    assert spec.slices * spec.cell_bits >= spec.magnitude_bits > (spec.slices - 1) * spec.cell_bits


@pytest.mark.parametrize("xbar_cols", [2, 3, 128])
def test_offset_spends_one_bitline_on_the_reference(xbar_cols):
    assert MappingSpec(xbar_cols=xbar_cols, sign_scheme="offset").data_cols == xbar_cols - 1
    assert MappingSpec(xbar_cols=xbar_cols).data_cols == xbar_cols


def test_offset_needs_two_bitlines():
    with pytest.raises(HardwareError, match="xbar_cols: got 1 with sign_scheme 'offset'.*>= 2"):
        MappingSpec(xbar_cols=1, sign_scheme="offset")
    assert MappingSpec(xbar_cols=1).data_cols == 1


def test_with_weight_bits_changes_only_the_bits():
    spec = MappingSpec(xbar_rows=64, cell_bits=1, g_min_us=2.0, g_max_us=50.0)
    other = spec.with_weight_bits(16)
    assert other.weight_bits == 16 and other.max_level == 32767
    assert dataclasses.replace(other, weight_bits=spec.weight_bits) == spec
    with pytest.raises(HardwareError, match="weight_bits.*1"):
        spec.with_weight_bits(1)


def test_spec_is_frozen_and_hashable():
    spec = MappingSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.weight_bits = 4
    assert hash(spec) == hash(MappingSpec(g_min_us=1, g_max_us=100))


@pytest.mark.parametrize("field, value", [("xbar_rows", 0), ("xbar_cols", -3), ("weight_bits", 1),
                                          ("weight_bits", 33), ("cell_bits", 0), ("xbar_rows", 1.5),
                                          ("g_min_us", 0.0), ("g_min_us", float("nan")), ("g_max_us", 0.5)])
def test_bad_values_are_refused_by_name_and_value(field, value):
    with pytest.raises(HardwareError) as info:
        MappingSpec(**{field: value})
    assert field in str(info.value) and str(value) in str(info.value)


def test_unknown_sign_scheme_lists_the_allowed_ones():
    with pytest.raises(HardwareError, match="sign_scheme: got 'unipolar'; allowed: differential, offset"):
        MappingSpec(sign_scheme="unipolar")


def test_hardware_error_is_a_value_error():
    assert issubclass(HardwareError, ValueError)
