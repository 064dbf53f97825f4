"""Projections hit their sparsity and level sets exactly and are idempotent."""

import pytest
import torch

from stages.errors import StageError
from stages.projections import LayerRule, kept_count, project, prune_mask, quantize


def gaussian(out=48, inp=40, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.875])
def test_filter_projection_keeps_the_strongest_rows(ratio):
    w = gaussian()
    z, mask = project(w, LayerRule(filter=ratio))
    kept_rows = z.abs().sum(1) > 0
    assert int(kept_rows.sum()) == kept_count(48, ratio)
    # every kept row is at least as strong as every removed row
    norms = w.norm(dim=1)
    assert norms[kept_rows].min() >= norms[~kept_rows].max()
    assert torch.equal(z[kept_rows], w[kept_rows])


@pytest.mark.parametrize("ratio", [0.2, 0.6])
def test_shape_projection_removes_columns(ratio):
    w = gaussian()
    z, _ = project(w, LayerRule(shape=ratio))
    assert int((z.abs().sum(0) > 0).sum()) == kept_count(40, ratio)


def test_combined_filter_and_shape_hit_both_counts():
    w = gaussian()
    z, mask = project(w, LayerRule(filter=0.75, shape=0.5))
    assert int(mask.any(1).sum()) == kept_count(48, 0.75)
    assert int(mask.any(0).sum()) == kept_count(40, 0.5)
    assert int(mask.sum()) == kept_count(48, 0.75) * kept_count(40, 0.5)
    assert torch.all(z[~mask] == 0)


def test_irregular_projection_hits_its_count():
    w = gaussian()
    z, _ = project(w, LayerRule(irregular=0.9))
    assert int((z != 0).sum()) == kept_count(w.numel(), 0.9)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantization_lands_on_levels(bits):
    w = gaussian()
    mask = prune_mask(w, LayerRule(filter=0.5))
    levels, alpha = quantize(w, mask, bits)
    max_level = 2 ** (bits - 1) - 1
    assert levels.abs().max() <= max_level
    assert torch.all(levels[~mask] == 0)
    z, _ = project(w, LayerRule(filter=0.5, weight_bits=bits))
    ratio = z[mask] / alpha
    assert torch.allclose(ratio, ratio.round(), atol=1e-4)
    # the least-squares scale is optimal for its levels: error is no larger at nearby scales
    err = lambda a: ((w[mask] - a * levels[mask]) ** 2).sum()
    assert err(alpha) <= err(alpha * 1.01) and err(alpha) <= err(alpha * 0.99)


def _quantize_comparing_levels(w, mask, weight_bits, iterations=20):
    """The alternation as first written: it stops when n repeats, comparing whole level tensors."""
    max_level = 2 ** (weight_bits - 1) - 1
    kept = w[mask].double()
    levels = torch.zeros(w.shape, dtype=torch.int32)
    top = kept.abs().max() if kept.numel() else torch.tensor(0.0)
    if top == 0:
        return levels, 1.0
    alpha, n = top / max_level, None
    for _ in range(iterations):
        n_next = (kept / alpha).round_().clamp_(-max_level, max_level)
        if n is not None and torch.equal(n_next, n):
            break
        n = n_next
        alpha = (kept @ n) / (n @ n)
    levels[mask] = n.to(torch.int32)
    return levels, float(alpha)


@pytest.mark.parametrize("case", range(40))
def test_quantization_stops_where_comparing_the_levels_stops_and_gives_the_same_bits(case):
    """quantize stops when alpha repeats (the next n is then the same), not by comparing n: the
    same levels and the same alpha, bit for bit, whether it converges early, late or never."""
    g = torch.Generator().manual_seed(case)
    bits = (2, 3, 4, 8)[case % 4]
    w = torch.randn(24 + case, 17, generator=g) * (0.1 + case)
    if case % 3 == 0:   # nearly on levels already, as late in ADMM: converges in an iteration or two
        w = (w / w.abs().max() * 7).round() * 0.05 + 1e-4 * torch.randn(w.shape, generator=g)
    mask = torch.rand(w.shape, generator=g) < (0.2 + 0.02 * case)
    for iterations in (1, 3, 20, 60):
        levels, alpha = quantize(w, mask, bits, iterations)
        expected_levels, expected_alpha = _quantize_comparing_levels(w, mask, bits, iterations)
        assert torch.equal(levels, expected_levels) and alpha == expected_alpha


def test_pruned_zeros_stay_out_of_the_scale_fit():
    w = gaussian()
    mask = prune_mask(w, LayerRule(filter=0.5))
    _, alpha_masked = quantize(w, mask, 4)
    _, alpha_alone = quantize(w[mask.any(1)], torch.ones_like(w[mask.any(1)], dtype=torch.bool), 4)
    assert alpha_masked == pytest.approx(alpha_alone)


@pytest.mark.parametrize("rule", [LayerRule(filter=0.6), LayerRule(shape=0.3),
                                  LayerRule(filter=0.5, shape=0.5, weight_bits=4),
                                  LayerRule(weight_bits=3), LayerRule(irregular=0.7, weight_bits=8)])
def test_projection_is_idempotent(rule):
    for seed in range(3):
        z, mask = project(gaussian(seed=seed), rule)
        z2, mask2 = project(z, rule)
        assert torch.equal(mask, mask2)
        assert torch.allclose(z, z2, atol=1e-6, rtol=1e-5)


def test_projection_is_no_farther_than_another_point_of_the_set():
    w = gaussian()
    rule = LayerRule(filter=0.5)
    z, _ = project(w, rule)
    other, _ = project(gaussian(seed=7), rule)   # another feasible point (its rows are a feasible mask)
    assert (w - z).norm() <= (w - w * (other != 0)).norm()


@pytest.mark.parametrize("kwargs", [{"filter": 1.0}, {"shape": -0.1}, {"weight_bits": 1}])
def test_bad_rules_name_the_value(kwargs):
    with pytest.raises(StageError) as err:
        LayerRule(**kwargs)
    assert str(list(kwargs.values())[0]) in str(err.value)


def test_block_projection_keeps_whole_tiles_of_the_compacted_matrix():
    from hardware import compact, occupied_tiles
    w = gaussian(300, 200)
    z, mask = project(w, LayerRule(block=0.5, tile=(128, 128)))
    assert occupied_tiles(mask, 128, 128) == kept_count(6, 0.5)   # 3 x 2 tiles, half kept
    # with filter pruning first, blocks are tiles of the compacted kept rows and columns
    z, mask = project(w, LayerRule(filter=0.5, block=0.5, tile=(64, 64)))
    from stages.projections import filter_mask
    rows = filter_mask(w, 0.5)
    assert not mask[~rows].any()
    packed = compact(mask, rows, torch.ones(200, dtype=torch.bool))
    assert packed.shape == (150, 200)
    assert occupied_tiles(packed, 64, 64) == kept_count(3 * 4, 0.5)
    for i in range(0, 200, 64):                   # each tile is all kept or all removed
        for o in range(0, 150, 64):
            tile = packed[o:o + 64, i:i + 64]
            assert tile.all() or not tile.any()


def test_block_pruning_needs_the_tile():
    with pytest.raises(StageError, match="tile"):
        LayerRule(block=0.5)
