"""The paper-scale models: shapes, parameter counts, names, residual groups and dense crossbar counts."""

import copy
import math

import pytest
import torch
from torch import nn

from hardware import MappingSpec, physical_crossbars
from stages.errors import StageError
from stages.models import crossbar_layers, gemm
from stages.zoo import MODELS, bn_after, build_zoo_model, residual_groups

SHAPES = {"lenet5": (1, 28, 28), "vgg16": (3, 32, 32), "resnet18": (3, 32, 32)}
RESNET_CONVS = ["conv1"] + [
    f"layer{s}.{b}.{c}" for s in range(1, 5) for b in range(2)
    for c in (["conv1", "conv2"] + (["shortcut.0"] if s > 1 and b == 0 else []))]


@pytest.fixture(scope="module")
def models():
    return {name: build_zoo_model(name, input_shape=SHAPES[name], num_classes=10) for name in MODELS}


def conv_linear_weights(model):
    return sum(m.weight.numel() for m in crossbar_layers(model).values())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_maps_a_batch_to_class_scores(models, name):
    model = models[name].eval()
    with torch.inference_mode():
        out = model(torch.randn(2, *SHAPES[name], generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 10)


def test_parameter_counts(models):
    # LeNet-5: 20*1*25 + 50*20*25 + 800*500 + 500*10 = 500 + 25,000 + 400,000 + 5,000 = 430,500
    # weights (the papers' "431K"); biases 20 + 50 + 500 + 10 = 580.
    assert conv_linear_weights(models["lenet5"]) == 430_500
    assert sum(p.numel() for p in models["lenet5"].parameters()) == 431_080
    # VGG-16 conv weights (9 * C_in * C_out): 1,728 + 36,864 + 73,728 + 147,456 + 294,912
    # + 2 * 589,824 + 1,179,648 + 5 * 2,359,296 = 14,710,464; fc 512*10 = 5,120.
    # (14,714,688 is the same convs counted with their 4,224 biases; ours have none, BN follows.)
    assert conv_linear_weights(models["vgg16"]) == 14_710_464 + 5_120
    # ResNet-18 conv weights: stem 1,728; stage 1 4*36,864 = 147,456; stage 2 73,728 + 3*147,456
    # + 8,192 = 524,288; stage 3 294,912 + 3*589,824 + 32,768 = 2,097,152; stage 4 1,179,648
    # + 3*2,359,296 + 131,072 = 8,388,608; sum 11,159,232. fc 5,120 + 10 bias. BN affine
    # 2*(64 + 4*64 + 5*128 + 5*256 + 5*512) = 9,600. Total 11,173,962.
    assert conv_linear_weights(models["resnet18"]) == 11_159_232 + 5_120
    assert sum(p.numel() for p in models["resnet18"].parameters()) == 11_173_962


def test_layer_names(models):
    assert list(crossbar_layers(models["lenet5"])) == ["conv1", "conv2", "fc1", "fc2"]
    assert [n for n, _ in models["lenet5"].named_children()] == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"]
    vgg_children = [n for n, _ in models["vgg16"].named_children()]
    assert list(crossbar_layers(models["vgg16"])) == [f"conv{i}" for i in range(1, 14)] + ["fc"]
    assert vgg_children[:4] == ["conv1", "bn1", "relu1", "conv2"]
    assert vgg_children[-4:] == ["relu13", "pool5", "flatten", "fc"]
    assert len(vgg_children) == 13 * 3 + 5 + 2
    assert list(crossbar_layers(models["resnet18"])) == RESNET_CONVS + ["fc"]
    names = dict(models["resnet18"].named_modules())
    for n in ("bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.shortcut.1", "layer4.1.bn2"):
        assert isinstance(names[n], nn.BatchNorm2d), n
    assert isinstance(names["layer1.0.shortcut"], nn.Identity)
    assert isinstance(names["layer2.1.shortcut"], nn.Identity)


def test_residual_groups_of_resnet18(models):
    assert residual_groups(models["resnet18"]) == [
        ["conv1", "layer1.0.conv2", "layer1.1.conv2"],
        ["layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"],
        ["layer3.0.conv2", "layer3.0.shortcut.0", "layer3.1.conv2"],
        ["layer4.0.conv2", "layer4.0.shortcut.0", "layer4.1.conv2"],
    ]
    assert residual_groups(models["lenet5"]) == [] and residual_groups(models["vgg16"]) == []


def _residual_sums_after_pruning(model, stage, convs, channel):
    """Zero filter `channel` of `convs` and its BN affine; return channel `channel` of every
    residual sum (the input of relu2) in layer<stage>, eval mode."""
    pruned = copy.deepcopy(model).eval()
    modules, bns = dict(pruned.named_modules()), bn_after(pruned)
    sums = []
    for block in modules[f"layer{stage}"]:
        block.relu2.register_forward_pre_hook(lambda m, args: sums.append(args[0][:, channel]))
    with torch.no_grad():
        for conv in convs:
            modules[conv].weight[channel] = 0
            modules[bns[conv]].weight[channel] = 0
            modules[bns[conv]].bias[channel] = 0
        head = pruned[: list(dict(pruned.named_children())).index(f"layer{stage}") + 1]
        head(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return sums


def test_every_residual_group_member_feeds_the_same_addition(models):
    # Pruning filter k consistently across a group zeroes channel k of every residual sum of
    # that stage (the joined stream); leaving out any one member leaves some sum nonzero, so
    # each member really writes into the additions, and the group is complete.
    model, k = models["resnet18"], 5
    for stage, group in enumerate(residual_groups(model), start=1):
        assert all(torch.all(s == 0) for s in _residual_sums_after_pruning(model, stage, group, k)), group
        for left_out in group:
            rest = [c for c in group if c != left_out]
            assert any(s.abs().sum() > 0 for s in _residual_sums_after_pruning(model, stage, rest, k)), left_out


def test_bn_after_names_the_batchnorm_fed_by_each_conv(models):
    resnet = models["resnet18"]
    pairs = bn_after(resnet)
    assert set(pairs) == set(RESNET_CONVS)
    assert pairs["conv1"] == "bn1" and pairs["layer1.0.conv1"] == "layer1.0.bn1"
    assert pairs["layer3.1.conv2"] == "layer3.1.bn2" and pairs["layer4.0.shortcut.0"] == "layer4.0.shortcut.1"
    assert bn_after(models["vgg16"]) == {f"conv{i}": f"bn{i}" for i in range(1, 14)}
    assert bn_after(models["lenet5"]) == {}
    # The data flow agrees: each named BN's input is the very tensor its conv produced.
    for model, shape in ((resnet, SHAPES["resnet18"]), (models["vgg16"], SHAPES["vgg16"])):
        modules, pairs, seen = dict(model.named_modules()), bn_after(model), {}
        hooks = [modules[c].register_forward_hook(lambda m, i, o, c=c: seen.__setitem__(c, o)) for c in pairs]
        hooks += [modules[b].register_forward_hook(lambda m, i, o, c=c: seen.__setitem__(c + "->bn", i[0]))
                  for c, b in pairs.items()]
        with torch.inference_mode():
            model.eval()(torch.randn(2, *shape))
        for h in hooks:
            h.remove()
        assert all(seen[c + "->bn"] is seen[c] for c in pairs)


# Dense crossbars at 128x128, 16-bit weights, 2-bit cells: slices = ceil(15/2) = 8,
# polarity 2 -> 16 physical crossbars per tile; tiles = ceil(in/128) * ceil(out/128).
SPEC = MappingSpec(xbar_rows=128, xbar_cols=128, weight_bits=16, cell_bits=2)
DENSE_TILES = {
    # layer:  in = C*kh*kw -> ceil(in/128)  x  out -> ceil(out/128)  = tiles
    "lenet5": {
        "conv1": 1,    # in    25 -> 1  x out  20 -> 1
        "conv2": 4,    # in   500 -> 4  x out  50 -> 1
        "fc1": 28,     # in   800 -> 7  x out 500 -> 4
        "fc2": 4,      # in   500 -> 4  x out  10 -> 1
    },                 # 37 tiles -> 592 crossbars
    "vgg16": {
        "conv1": 1,    # in    27 -> 1  x out  64 -> 1
        "conv2": 5,    # in   576 -> 5  x out  64 -> 1
        "conv3": 5,    # in   576 -> 5  x out 128 -> 1
        "conv4": 9,    # in  1152 -> 9  x out 128 -> 1
        "conv5": 18,   # in  1152 -> 9  x out 256 -> 2
        "conv6": 36,   # in  2304 -> 18 x out 256 -> 2
        "conv7": 36,   # in  2304 -> 18 x out 256 -> 2
        "conv8": 72,   # in  2304 -> 18 x out 512 -> 4
        "conv9": 144,  # in  4608 -> 36 x out 512 -> 4
        "conv10": 144,
        "conv11": 144,
        "conv12": 144,
        "conv13": 144,
        "fc": 4,       # in   512 -> 4  x out  10 -> 1
    },                 # 1+5+5+9+18+36+36+72+5*144+4 = 906 tiles -> 14,496 crossbars
    "resnet18": {
        "conv1": 1,                  # in   27 -> 1  x out  64 -> 1
        "layer1.0.conv1": 5,         # in  576 -> 5  x out  64 -> 1
        "layer1.0.conv2": 5,
        "layer1.1.conv1": 5,
        "layer1.1.conv2": 5,         # stage 1: 20
        "layer2.0.conv1": 5,         # in  576 -> 5  x out 128 -> 1
        "layer2.0.conv2": 9,         # in 1152 -> 9  x out 128 -> 1
        "layer2.0.shortcut.0": 1,    # in   64 -> 1  x out 128 -> 1
        "layer2.1.conv1": 9,
        "layer2.1.conv2": 9,         # stage 2: 33
        "layer3.0.conv1": 18,        # in 1152 -> 9  x out 256 -> 2
        "layer3.0.conv2": 36,        # in 2304 -> 18 x out 256 -> 2
        "layer3.0.shortcut.0": 2,    # in  128 -> 1  x out 256 -> 2
        "layer3.1.conv1": 36,
        "layer3.1.conv2": 36,        # stage 3: 128
        "layer4.0.conv1": 72,        # in 2304 -> 18 x out 512 -> 4
        "layer4.0.conv2": 144,       # in 4608 -> 36 x out 512 -> 4
        "layer4.0.shortcut.0": 8,    # in  256 -> 2  x out 512 -> 4
        "layer4.1.conv1": 144,
        "layer4.1.conv2": 144,       # stage 4: 512
        "fc": 4,                     # in  512 -> 4  x out  10 -> 1
    },                               # 1+20+33+128+512+4 = 698 tiles -> 11,168 crossbars
}
DENSE_CROSSBARS = {"lenet5": 592, "vgg16": 14_496, "resnet18": 11_168}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dense_crossbar_counts_match_the_hand_worked_table(models, name):
    assert SPEC.slices * SPEC.polarity == 16
    counts = {}
    for layer, module in crossbar_layers(models[name]).items():
        n_out, n_in = gemm(module.weight).shape  # (out, in)
        counts[layer] = physical_crossbars(n_in, n_out, SPEC)
    assert counts == {layer: 16 * t for layer, t in DENSE_TILES[name].items()}
    assert sum(counts.values()) == DENSE_CROSSBARS[name] == 16 * sum(DENSE_TILES[name].values())


def test_tile_table_agrees_with_the_ceil_formula(models):
    # The hand table, recomputed from shapes alone, so a typo in it cannot hide.
    for name, table in DENSE_TILES.items():
        for layer, module in crossbar_layers(models[name]).items():
            n_out, n_in = gemm(module.weight).shape
            assert table[layer] == math.ceil(n_in / 128) * math.ceil(n_out / 128), (name, layer)


@pytest.mark.parametrize("name, shape, message", [
    ("alexnet", (3, 32, 32), "model.name: got 'alexnet'; allowed: lenet5, vgg16, resnet18"),
    ("lenet5", (3, 32, 32), "'lenet5' needs input shape (1, 28, 28)"),
    ("resnet18", (1, 28, 28), "got (1, 28, 28)"),
    ("vgg16", (3, 64, 64), "'vgg16' needs input shape (3, 32, 32)"),
])
def test_bad_name_or_shape_is_refused_with_the_value(name, shape, message):
    with pytest.raises(StageError) as err:
        build_zoo_model(name, input_shape=shape, num_classes=10)
    assert message in str(err.value)


def test_same_seed_same_weights():
    a = build_zoo_model("lenet5", input_shape=[1, 28, 28], num_classes=10, seed=3)
    b = build_zoo_model("lenet5", input_shape=(1, 28, 28), num_classes=10, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "lenet5"])
def test_fx_graph_agrees_with_the_hand_written_residual_groups_and_batchnorms(name):
    """stages.models.layer_graph finds these from the traced graph; zoo lists them by hand."""
    from stages.models import crossbar_layers, layer_graph

    model = MODELS[name]()
    graph = layer_graph(model)
    layers = list(crossbar_layers(model))
    joined = {n for group in residual_groups(model) for n in group}
    assert set(layers) - graph.filter_prunable == joined | {layers[-1]}   # residual joins + output layer
    assert {p: graph.norms[p][0] for p in graph.filter_prunable if graph.norms[p]} == {
        c: bn for c, bn in bn_after(model).items() if c in graph.filter_prunable}
