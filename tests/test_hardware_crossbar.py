"""Crossbar tiling, counts, and compaction of pruned rows and columns. W is (out, in)."""

import pytest
import torch

from hardware import (HardwareError, MappingSpec, compact, expand, occupied_tiles, physical_crossbars,
                      tile_slices, tiles)

SHAPES = [(1, 1), (5, 3), (128, 128), (300, 10), (10, 300), (257, 129), (64, 256), (1000, 7)]  # (in, out)
XBARS = [(128, 128), (64, 32), (7, 5), (50, 3)]


@pytest.mark.parametrize("xbar_rows, xbar_cols", XBARS)
@pytest.mark.parametrize("n_in, n_out", SHAPES)
def test_tiles_cover_the_matrix_exactly_once(n_in, n_out, xbar_rows, xbar_cols):
    hits = torch.zeros(n_out, n_in, dtype=torch.int32)
    parts = tile_slices(n_in, n_out, xbar_rows, xbar_cols)
    for rows, cols in parts:
        block = hits[cols, rows]
        assert 0 < block.shape[1] <= xbar_rows and 0 < block.shape[0] <= xbar_cols
        hits[cols, rows] += 1
    assert torch.all(hits == 1)
    assert len(parts) == tiles(n_in, n_out, xbar_rows, xbar_cols)


def test_tile_order_is_inputs_outer_outputs_inner():
    parts = tile_slices(200, 150, 128, 128)
    assert parts == [(slice(0, 128), slice(0, 128)), (slice(0, 128), slice(128, 150)),
                     (slice(128, 200), slice(0, 128)), (slice(128, 200), slice(128, 150))]


def test_empty_matrix_has_no_tiles():
    assert tile_slices(0, 10, 128, 128) == [] and tiles(0, 10, 128, 128) == 0 and tiles(10, 0, 4, 4) == 0


@pytest.mark.parametrize("kept_in, kept_out, weight_bits, cell_bits, expected", [
    (64, 256, 16, 2, 2 * 8 * 2),     # 1 x 2 tiles, 8 slices, differential pair
    (300, 10, 8, 2, 3 * 1 * 4 * 2),  # 3 x 1 tiles, 4 slices
    (1, 1, 8, 2, 4 * 2),             # one tile: slices * polarity
    (1, 1, 5, 4, 1 * 2),
    (129, 129, 4, 1, 4 * 3 * 2),
    (0, 256, 8, 2, 0),
    (64, 0, 8, 2, 0),
])
def test_physical_crossbars_by_hand(kept_in, kept_out, weight_bits, cell_bits, expected):
    spec = MappingSpec(weight_bits=weight_bits, cell_bits=cell_bits)
    assert physical_crossbars(kept_in, kept_out, spec) == expected


@pytest.mark.parametrize("kept_in, kept_out, weight_bits, cell_bits, expected", [
    (64, 256, 16, 2, 1 * 3 * 8),     # 127 data bitlines: 3 output tiles; 8 slices of 16 bits; one array
    (300, 127, 8, 2, 3 * 1 * 4),     # 127 outputs still fit one tile
    (300, 128, 8, 2, 3 * 2 * 4),     # the 128th output needs a second tile
    (1, 1, 8, 2, 4),
    (1, 1, 7, 2, 4),                 # 7 bits on 2-bit cells: 4 slices (differential needs 3, twice)
    (0, 256, 8, 2, 0),
])
def test_physical_crossbars_offset_by_hand(kept_in, kept_out, weight_bits, cell_bits, expected):
    spec = MappingSpec(weight_bits=weight_bits, cell_bits=cell_bits, sign_scheme="offset")
    assert physical_crossbars(kept_in, kept_out, spec) == expected


@pytest.mark.parametrize("xbar_rows, xbar_cols", XBARS)
@pytest.mark.parametrize("n_in, n_out", SHAPES)
def test_physical_crossbars_tile_outputs_by_data_bitlines(n_in, n_out, xbar_rows, xbar_cols):
    for scheme in ("differential", "offset"):
        spec = MappingSpec(xbar_rows=xbar_rows, xbar_cols=xbar_cols, sign_scheme=scheme)
        arrays = physical_crossbars(n_in, n_out, spec)
        assert arrays == tiles(n_in, n_out, xbar_rows, spec.data_cols) * spec.slices * spec.polarity
        in_blocks = -(-n_in // xbar_rows)
        out_tiles, rest = divmod(arrays, in_blocks * spec.slices * spec.polarity)
        assert rest == 0
        # enough data bitlines for every output (the reference column apart), and no tile to spare
        assert out_tiles * spec.data_cols >= n_out > (out_tiles - 1) * spec.data_cols
    assert tiles(n_in, n_out, xbar_rows, xbar_cols) == -(-n_in // xbar_rows) * -(-n_out // xbar_cols)


def test_physical_crossbars_uses_rows_for_inputs():
    spec = MappingSpec(xbar_rows=256, xbar_cols=64, weight_bits=2)
    assert physical_crossbars(256, 64, spec) == 2
    assert physical_crossbars(64, 256, spec) == 4 * 2


def test_occupied_tiles_on_a_hand_made_mask():
    mask = torch.zeros(6, 10, dtype=torch.bool)  # (out, in); blocks: 2 along out (cols=3) x 3 along in (rows=4)
    mask[0, 0] = mask[1, 2] = True               # both in block (0, 0)
    mask[5, 9] = True                            # block (1, 2), a short block on both axes
    mask[4, 5] = True                            # block (1, 1)
    assert occupied_tiles(mask, xbar_rows=4, xbar_cols=3) == 3
    assert occupied_tiles(torch.zeros(6, 10, dtype=torch.bool), 4, 3) == 0
    assert occupied_tiles(torch.ones(6, 10, dtype=torch.bool), 4, 3) == tiles(10, 6, 4, 3) == 6


def test_occupied_tiles_blocks_inputs_by_rows():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 0] = mask[0, 3] = True               # same 4-wordline block; different 2-wide blocks
    assert occupied_tiles(mask, xbar_rows=4, xbar_cols=2) == 1
    assert occupied_tiles(mask, xbar_rows=2, xbar_cols=4) == 2
    assert occupied_tiles(mask.float(), xbar_rows=4, xbar_cols=2) == 1


def _keeps(seed, n_out=9, n_in=13):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_out, generator=g) < 0.6, torch.rand(n_in, generator=g) < 0.6, torch.randn(n_out, n_in, generator=g)


@pytest.mark.parametrize("seed", range(5))
def test_compact_expand_round_trip(seed):
    keep_out, keep_in, w = _keeps(seed)
    c = compact(w, keep_out, keep_in)
    assert c.shape == (int(keep_out.sum()), int(keep_in.sum()))
    assert torch.equal(c, w[keep_out][:, keep_in])
    assert torch.equal(expand(c, keep_out, keep_in), w * torch.outer(keep_out, keep_in))
    assert torch.equal(compact(expand(c, keep_out, keep_in), keep_out, keep_in), c)


def test_compact_and_expand_keep_a_leading_batch_dim_and_dtype():
    keep_out, keep_in, w = _keeps(7)
    batch = torch.stack([w, 2 * w, -w]).to(torch.int32)
    c = compact(batch, keep_out, keep_in)
    assert c.shape == (3, int(keep_out.sum()), int(keep_in.sum())) and c.dtype == torch.int32
    assert torch.equal(expand(c, keep_out, keep_in), batch * torch.outer(keep_out, keep_in))


def test_everything_pruned_gives_an_empty_compact_and_a_zero_expand():
    w = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    none_out, all_in = torch.zeros(4, dtype=torch.bool), torch.ones(5, dtype=torch.bool)
    c = compact(w, none_out, all_in)
    assert c.shape == (0, 5)
    assert torch.equal(expand(c, none_out, all_in), torch.zeros(4, 5))


@pytest.mark.parametrize("call, text", [
    (lambda: tiles(-1, 4, 128, 128), "kept_in: got -1"),
    (lambda: tiles(4, 4, 0, 128), "xbar_rows: got 0"),
    (lambda: tiles(4, 2.5, 128, 128), "kept_out: got 2.5"),
    (lambda: physical_crossbars(4, 4, "isaac"), "spec: got str"),
    (lambda: occupied_tiles(torch.ones(3), 4, 4), r"mask: got shape \(3,\)"),
    (lambda: compact(torch.ones(3, 4), torch.ones(3), torch.ones(4, dtype=torch.bool)), "keep_out: got dtype"),
    (lambda: compact(torch.ones(3, 4), torch.ones(3, dtype=torch.bool), torch.ones(5, dtype=torch.bool)),
     "keep_in: got length 5"),
    (lambda: expand(torch.ones(2, 2), torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool)),
     r"compact_w: got shape \(2, 2\)"),
])
def test_bad_inputs_name_the_value(call, text):
    with pytest.raises(HardwareError, match=text):
        call()
