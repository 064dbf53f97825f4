"""The paper presets build their models and take one ADMM step on the CPU, on fake inputs."""

import pytest
import torch

from pipeline import steps
from pipeline.config import load_config
from stages.data import DATA_SHAPES, DataSplits
from stages.models import crossbar_layers


def fake(dataset: str, n: int = 16) -> DataSplits:
    """Random inputs of the data set's shape, two per class, in the real DataSplits form."""
    shape, classes = DATA_SHAPES[dataset]
    g = torch.Generator().manual_seed(0)
    x = lambda k: torch.randn(k, *shape, generator=g)
    y = lambda k: torch.arange(k) % classes
    return DataSplits(x(n), y(n), x(n // 2), y(n // 2), x(n // 2), y(n // 2), classes, shape,
                      augmentation="crop-flip" if dataset == "cifar10" else "none")


@pytest.mark.parametrize("preset", ["lenet5-mnist", "vgg16-cifar10", "resnet18-cifar10"])
@pytest.mark.parametrize("method", ["admm", "magnitude"])
def test_preset_takes_one_compression_step(preset, method):
    cfg = load_config(preset, ["admm.epochs=1", "data.batch_size=8", f"admm.method={method}",
                               "resources.gpus_per_trial=0", "resources.gpus_per_task=0"])
    data = fake(cfg.data.name)
    template = steps.template_for(cfg, data)
    steps.check_layers(cfg, template)
    seen = []
    state, masks, metrics = steps.run_admm(cfg, data, template.state_dict(), rho=cfg.admm.rho,
                                           ratios=steps.default_ratios(cfg), on_epoch_end=seen.append)
    assert len(seen) == 1 and 0 <= metrics["val_accuracy"] <= 1
    assert metrics["weight_compression"] > 3                      # the preset's pruning took hold
    layers = crossbar_layers(template)
    first = next(iter(layers))
    assert masks[first].all(1).all() or cfg.admm.layers.get(first)   # first layer kept unless named
    assert set(masks) == set(layers)                             # every layer quantized
