"""The paper-scale models: LeNet-5 (MNIST), VGG-16 and ResNet-18 (CIFAR-10).

Plain `nn.Module`s whose qualified names are stable and readable, because they
become rows of the layer tables and keys of per-layer config. Every model is
an `nn.Sequential` over an OrderedDict, so `named_modules()` walks it in
forward order (the order `stages.models.cascade_pairs` relies on).

For structured pruning of the residual network, `residual_groups` lists the
convs whose output channels are joined by one residual addition, and
`bn_after` names the BatchNorm that normalizes each conv's output.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from stages.errors import StageError

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """LeNet-5 for 28x28 MNIST, the Caffe LeNet of Han et al. (NIPS 2015) and Zhang et al. (ECCV 2018).

    conv1 20@5x5 -> pool -> conv2 50@5x5 -> pool -> fc1 500 -> fc2: 430,500
    weights ("431K"). Caffe's `lenet.prototxt` has no ReLU after its convs;
    like the usual PyTorch ports we put one after each conv and after fc1.
    """
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 20, kernel_size=5)),  # (B, 20, 24, 24)
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),                             # (B, 20, 12, 12)
        ("conv2", nn.Conv2d(20, 50, kernel_size=5)),            # (B, 50, 8, 8)
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),                             # (B, 50, 4, 4)
        ("flatten", nn.Flatten()),                              # (B, 800)
        ("fc1", nn.Linear(50 * 4 * 4, 500)),                    # (B, 500)
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(500, num_classes)),                   # (B, num_classes)
    ]))


def vgg16(num_classes: int = 10) -> nn.Sequential:
    """VGG-16 (Simonyan & Zisserman, ICLR 2015, config D) for 32x32 CIFAR-10, with batch norm.

    The common CIFAR variant (e.g. kuangliu/pytorch-cifar): 13 3x3 convs, each
    conv -> BatchNorm2d -> ReLU, five 2x2 max-pools taking 32x32 to 1x1, and a
    single Linear 512 -> num_classes. Convs have no bias: the BatchNorm after
    them subtracts it again. Names conv1..13, bn1..13, relu1..13, pool1..5, flatten, fc.
    """
    layers: list[tuple[str, nn.Module]] = []
    width, conv, pool = 3, 0, 0
    for c in VGG16_CFG:
        if c == "M":
            pool += 1
            layers.append((f"pool{pool}", nn.MaxPool2d(2)))  # (B, width, H/2, W/2)
            continue
        conv += 1
        layers += [(f"conv{conv}", nn.Conv2d(width, c, kernel_size=3, padding=1, bias=False)),
                   (f"bn{conv}", nn.BatchNorm2d(c)),
                   (f"relu{conv}", nn.ReLU())]
        width = c
    layers += [("flatten", nn.Flatten()),             # (B, 512): five pools take 32x32 to 1x1
               ("fc", nn.Linear(width, num_classes))]  # (B, num_classes)
    return nn.Sequential(OrderedDict(layers))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., CVPR 2016): relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    Where the shape changes the shortcut is option B, a 1x1 conv with the
    block's stride and a BatchNorm (`shortcut.0`, `shortcut.1`); elsewhere it
    is the identity. Children are registered in data-flow order.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    @property
    def projects(self) -> bool:
        """True when the shortcut is a 1x1 conv projection, so the block starts a new residual stream."""
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, channels, H/stride, W/stride)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))  # the residual addition


def resnet18(num_classes: int = 10) -> nn.Sequential:
    """ResNet-18 (He et al., CVPR 2016) with the CIFAR stem, as in kuangliu/pytorch-cifar.

    Stem: 3x3 conv 64, stride 1, no max-pool (torchvision's 7x7/2 + pool stem
    is for 224x224 ImageNet). Four stages of two BasicBlocks, widths 64, 128,
    256, 512, stages 2-4 start with stride 2; global average pool; fc.
    11,173,962 parameters for 10 classes.
    """
    stages: list[tuple[str, nn.Module]] = []
    width = 64
    for i, (channels, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        blocks = nn.Sequential(BasicBlock(width, channels, stride), BasicBlock(channels, channels))
        stages.append((f"layer{i}", blocks))
        width = channels
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 64, kernel_size=3, padding=1, bias=False)),  # (B, 64, 32, 32)
        ("bn1", nn.BatchNorm2d(64)),
        ("relu", nn.ReLU()),
        *stages,                                 # (B, 64, 32, 32) -> 128@16 -> 256@8 -> (B, 512, 4, 4)
        ("avgpool", nn.AdaptiveAvgPool2d(1)),    # (B, 512, 1, 1)
        ("flatten", nn.Flatten()),               # (B, 512)
        ("fc", nn.Linear(512, num_classes)),     # (B, num_classes)
    ]))


def residual_groups(model: nn.Module) -> list[list[str]]:
    """Conv names whose output channels meet in the same residual additions, one list per stream.

    A stream starts at the stem conv (or at a block whose shortcut projects,
    with its conv2 and `shortcut.0`) and every identity block after it adds its
    conv2 to it: for resnet18, [conv1, layer1.0.conv2, layer1.1.conv2],
    [layer2.0.conv2, layer2.0.shortcut.0, layer2.1.conv2], ... Pruning filter k
    of one member changes channel k of the joined tensor, so a member is pruned
    together with the whole group or not at all. [] for a model without BasicBlocks.
    Assumes, as in the zoo, that the stem is the only conv outside the blocks before the first one.
    """
    groups: list[list[str]] = []
    stream: list[str] = []
    stem = None
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            if module.projects:  # the old stream ends here; the block writes a new one
                stream = [f"{name}.conv2", f"{name}.shortcut.0"]
                groups.append(stream)
                continue
            if not stream:       # first block adds to what the stem wrote
                stream = [stem] if stem else []
                groups.append(stream)
            stream.append(f"{name}.conv2")
        elif isinstance(module, nn.Conv2d) and not groups:
            stem = name
    return groups


def bn_after(model: nn.Module) -> dict[str, str]:
    """Conv name -> name of the BatchNorm2d that directly normalizes its output.

    Read from registration order: a conv followed by a BatchNorm2d of its
    width, as every zoo model registers them (conv, bn). {} for LeNet-5.
    """
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    return {name: next_name for (name, module), (next_name, nxt) in zip(leaves, leaves[1:])
            if isinstance(module, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d)
            and nxt.num_features == module.out_channels}


MODELS = {"lenet5": lenet5, "vgg16": vgg16, "resnet18": resnet18}
INPUT_SHAPES = {"lenet5": (1, 28, 28), "vgg16": (3, 32, 32), "resnet18": (3, 32, 32)}  # (C, H, W)


def build_zoo_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> nn.Module:
    """Build a zoo model by config name, checking the (C, H, W) input it was designed for.

    Initial weights come from `seed` alone (the global RNG is forked, not touched).
    """
    if name not in MODELS:
        raise StageError(f"model.name: got {name!r}; allowed: {', '.join(MODELS)}")
    if tuple(input_shape) != INPUT_SHAPES[name]:
        raise StageError(f"model.name: {name!r} needs input shape {INPUT_SHAPES[name]} (C, H, W); "
                         f"got {tuple(input_shape)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise StageError(f"num_classes: got {num_classes!r}; allowed: an integer >= 1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](num_classes=num_classes)
