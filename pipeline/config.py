"""The run configuration: one YAML file, validated once at the boundary.

Every section is a frozen pydantic model with extra="forbid": an unknown key,
a wrong type or an out-of-range value is refused before Ray starts, with a
message naming the field, the value and what is allowed. Field descriptions
state units. Presets ship in pipeline/configs/*.yaml.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError

Structure = Literal["filter", "shape", "block", "irregular"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    name: Literal["digits", "mnist", "fashion-mnist", "cifar10"] = Field("digits", description="data set")
    root: Optional[str] = Field(None, description="folder of the torchvision data files (not for digits)")
    download: bool = Field(False, description="let torchvision download the data set into root")
    val_fraction: float = Field(0.2, gt=0, lt=0.5, description="fraction of the training set held out for validation")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="digits only: fraction held out for test "
                                 "(torchvision sets use their official test split)")
    split_seed: int = Field(0, description="seed of the fixed stratified split")
    batch_size: int = Field(64, ge=1, description="training mini-batch size, examples")


class ModelConfig(Section):
    name: Literal["mlp", "convnet", "lenet5", "vgg16", "resnet18"] = Field("mlp", description="architecture")
    hidden: tuple[int, ...] = Field((256, 256), min_length=1,
                                    description="mlp: hidden widths; convnet: conv channels; others: unused")

    @model_validator(mode="after")
    def _positive(self):
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {list(self.hidden)}")
        return self


class TrainConfig(Section):
    epochs: int = Field(30, ge=0, description="epochs")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    optimizer: Literal["sgd", "adam"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay")


class RetrainConfig(TrainConfig):
    noise_variation: Literal["none", "lognormal", "additive"] = Field(
        "none", description="variation-aware retraining: device variation drawn at every training step")
    noise_sigma: float = Field(0.0, ge=0, description="its sigma (relative, as in montecarlo scenarios)")

    @model_validator(mode="after")
    def _noise(self):
        if (self.noise_variation == "none") != (self.noise_sigma == 0):
            raise ValueError(f"noise_variation {self.noise_variation!r} with noise_sigma {self.noise_sigma}: "
                             "give both (a variation and sigma > 0) or neither")
        return self


class LayerPrune(Section):
    """Fractions of a layer's structures removed, each in [0, 1)."""

    filter: float = Field(0.0, ge=0, lt=1, description="fraction of rows (output channels) removed")
    shape: float = Field(0.0, ge=0, lt=1, description="fraction of columns (input positions) removed")
    block: float = Field(0.0, ge=0, lt=1, description="fraction of crossbar-sized blocks removed")
    irregular: float = Field(0.0, ge=0, lt=1, description="fraction of single weights removed")


class AdmmConfig(TrainConfig):
    method: Literal["admm", "magnitude"] = Field(
        "admm", description="admm: ADMM regularized pruning; magnitude: one-shot structured magnitude "
        "pruning of the pretrained weights (L2 norms of the same structures), retrained for "
        "admm.epochs + retrain.epochs epochs: the same training budget")
    compare_magnitude: bool = Field(False, description="also run the magnitude baseline at the chosen "
                                    "ratios and report it in the summary")
    epochs: int = Field(20, ge=1, description="ADMM epochs (one W-, Z- and U-step each)")
    rho: float = Field(1e-3, gt=0, description="initial ADMM penalty rho")
    rho_multiplier: float = Field(1.3, ge=1, description="rho is multiplied by this every rho_every epochs")
    rho_every: int = Field(5, ge=1, description="epochs per ADMM stage (rho step and lr reset)")
    quantize: bool = Field(True, description="also project onto mapping.weight_bits levels")
    target_compression: float = Field(1.0, ge=1, description="weight compression a trial must reach, x")
    layers: dict[str, LayerPrune] = Field(default_factory=dict,
                                          description="per-layer prune ratios (Tune's default point)")
    all_layers: LayerPrune = Field(LayerPrune(), description="ratios for every layer not in `layers`; "
                                   "filter ratios are skipped where the graph forbids filter pruning")
    first_layer: Literal["prune", "keep"] = Field("keep", description="does all_layers apply to the first layer")
    last_layer: Literal["prune", "keep"] = Field("keep", description="does all_layers apply to the last layer "
                                                 "(shape and block only: its outputs are the classes)")


class TuneConfig(Section):
    num_samples: int = Field(4, ge=1, description="Tune trials")
    max_concurrent_trials: Optional[int] = Field(None, ge=1, description="trials at once (None: as CPUs allow)")
    rho: tuple[float, ...] = Field((), description="rho values to choose from; empty: admm.rho")
    ratios: dict[str, dict[Structure, tuple[float, float]]] = Field(
        default_factory=dict, description="layer -> structure -> [low, high) uniform prune-ratio range")
    early_stopping: Literal["asha", "none"] = Field(
        "asha", description="asha: stop weak trials early (which ones depends on the order trials "
        "report in); none: every trial runs every epoch, and a seed gives the same tables")
    grace_period: int = Field(5, ge=1, description="ASHA: epochs before a trial may be stopped")
    reduction_factor: float = Field(2, gt=1, description="ASHA reduction factor")

    @model_validator(mode="after")
    def _ranges(self):
        for layer, by_structure in self.ratios.items():
            for structure, (low, high) in by_structure.items():
                if not 0 <= low <= high < 1:
                    raise ValueError(f"ratios.{layer}.{structure}: got [{low}, {high}]; "
                                     "allowed: 0 <= low <= high < 1")
        if any(r <= 0 for r in self.rho):
            raise ValueError(f"rho: got {list(self.rho)}; allowed: values > 0")
        return self


class MappingConfig(Section):
    weight_bits: int = Field(4, ge=2, le=16, description="signed weight precision, bits incl. sign")
    cell_bits: int = Field(2, ge=1, le=8, description="bits stored per memristor")
    xbar_rows: int = Field(128, ge=1, description="crossbar wordlines (inputs)")
    xbar_cols: int = Field(128, ge=1, description="crossbar bitlines (outputs)")
    sign_scheme: Literal["differential", "offset"] = Field(
        "differential", description="differential: G+ - G- device pairs; offset: one device per weight "
        "holding n + max_level, minus a reference column per crossbar")
    g_min_us: float = Field(1.0, gt=0, description="lowest conductance, microsiemens")
    g_max_us: float = Field(100.0, gt=0, description="highest conductance, microsiemens")
    cascade: bool = Field(True, description="pruned filters remove the next layer's wordlines")
    mode: Literal["one-shot", "progressive"] = Field(
        "one-shot", description="one-shot: every weight onto its level at once; progressive: the "
        "weights nearest their levels first, then retrain the rest, round by round (Yuan et al.)")
    progressive_fractions: tuple[float, ...] = Field(
        (0.5, 0.75, 0.9), description="fraction of kept weights on their levels after each round "
        "(increasing, in (0, 1)); a last round maps the rest")
    progressive_epochs: int = Field(5, ge=1, description="retraining epochs after each round")

    @model_validator(mode="after")
    def _range(self):
        f = self.progressive_fractions
        if not all(0 < a < 1 for a in f) or any(b <= a for a, b in zip(f, f[1:])):
            raise ValueError(f"progressive_fractions: got {list(f)}; allowed: increasing values in (0, 1)")
        if self.g_min_us >= self.g_max_us:
            raise ValueError(f"g_min_us ({self.g_min_us}) must be below g_max_us ({self.g_max_us})")
        return self


class HardwareConfig(Section):
    preset: Literal["isaac", "puma"] = Field("isaac", description="per-component cost table")
    baseline_weight_bits: int = Field(16, ge=2, le=32, description="dense baseline weight precision, bits")
    scopes: tuple[Literal["crossbar", "ima", "tile"], ...] = Field(
        ("crossbar",), min_length=1, description="which components count: per crossbar, per IMA, per tile")
    overrides: dict[str, dict[Literal["power_mw", "area_mm2"], float]] = Field(
        default_factory=dict, description="component -> replaced power_mw / area_mm2 per instance")


class ScenarioConfig(Section):
    """One device scenario; every parameter has a column in the `montecarlo` table."""

    id: Optional[str] = Field(None, min_length=1, description="stable scenario id (seeds derive from it); "
                              "default: built from the parameters")
    variation: Literal["none", "lognormal", "additive"] = "none"
    sigma: float = Field(0.0, ge=0, description="programming variation, relative (lognormal: of G; "
                         "additive: of g_max - g_min)")
    p_sa0: float = Field(0.0, ge=0, le=1, description="probability of a device stuck at g_min")
    p_sa1: float = Field(0.0, ge=0, le=1, description="probability of a device stuck at g_max")
    read_noise: float = Field(0.0, ge=0, description="read noise per inference, relative std of G")
    drift_nu: float = Field(0.0, ge=0, description="conductance drift exponent nu (mean over devices)")
    drift_nu_std: float = Field(0.0, ge=0, description="spread (std) of nu over devices")
    drift_t_s: float = Field(1.0, gt=0, description="time since programming, seconds")
    drift_t0_s: float = Field(1.0, gt=0, description="reference time of the programmed conductance, seconds")
    tiles: bool = Field(False, description="simulate each crossbar tile's partial sums (implied by adc/dac bits)")
    adc_bits: int = Field(0, ge=0, le=24, description="ADC resolution per tile, bits (0: infinite)")
    dac_bits: int = Field(0, ge=0, le=24, description="DAC input resolution, bits (0: infinite)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.p_sa0 + self.p_sa1 > 1:
            raise ValueError(f"p_sa0 + p_sa1 = {self.p_sa0 + self.p_sa1}; allowed: <= 1")
        if self.variation == "none" and self.sigma > 0:
            raise ValueError(f"sigma = {self.sigma} needs variation 'lognormal' or 'additive'")
        if self.drift_t_s < self.drift_t0_s:
            raise ValueError(f"drift_t_s = {self.drift_t_s} is before drift_t0_s = {self.drift_t0_s}")
        return self

    def key(self) -> str:
        """The id: given, or the non-default parameters joined, e.g. lognormal-sigma0.1-adc6."""
        if self.id:
            return self.id
        parts = [self.variation] if self.variation != "none" or self.sigma else []
        defaults = ScenarioConfig()
        names = {"sigma": "sigma", "p_sa0": "sa0_", "p_sa1": "sa1_", "read_noise": "read",
                 "drift_nu": "nu", "drift_nu_std": "nustd", "drift_t_s": "t", "drift_t0_s": "t0_",
                 "adc_bits": "adc", "dac_bits": "dac"}
        if self.variation != "none":
            parts.append(f"sigma{self.sigma:g}")
        for field, short in names.items():
            value = getattr(self, field)
            if field != "sigma" and value != getattr(defaults, field):
                parts.append(f"{short}{value:g}")
        if self.tiles and not (self.adc_bits or self.dac_bits):
            parts.append("tiles")
        return "-".join(parts) or "ideal"


class ScenarioGrid(Section):
    """Every combination of these values is a scenario (ids built from the parameters)."""

    variation: tuple[Literal["none", "lognormal", "additive"], ...] = ("lognormal",)
    sigma: tuple[float, ...] = (0.0,)
    p_sa0: tuple[float, ...] = (0.0,)
    p_sa1: tuple[float, ...] = (0.0,)
    read_noise: tuple[float, ...] = (0.0,)
    drift_nu: tuple[float, ...] = (0.0,)
    drift_nu_std: tuple[float, ...] = (0.0,)
    drift_t_s: tuple[float, ...] = (1.0,)
    adc_bits: tuple[int, ...] = (0,)
    dac_bits: tuple[int, ...] = (0,)

    def scenarios(self) -> list[ScenarioConfig]:
        import itertools

        fields = list(type(self).model_fields)
        out = []
        for values in itertools.product(*(getattr(self, f) for f in fields)):
            params = dict(zip(fields, values))
            if params["variation"] == "none" and params["sigma"] > 0:
                continue   # sigma needs a variation model: not a combination
            out.append(ScenarioConfig(**params))
        return out


class MonteCarloConfig(Section):
    trials: int = Field(50, ge=1, description="trials per scenario")
    chunk_size: int = Field(50, ge=1, description="trials per Ray task")
    batch_trials: int = Field(50, ge=1, description="trials evaluated together in one forward pass "
                              "(1: one at a time); the accuracies do not depend on it")
    scenarios: tuple[ScenarioConfig, ...] = Field((ScenarioConfig(id="ideal"),), description="device scenarios")
    grid: Optional[ScenarioGrid] = Field(None, description="more scenarios: every combination of its values")

    @model_validator(mode="after")
    def _unique(self):
        ids = [s.key() for s in self.all_scenarios()]
        if not ids:
            raise ValueError("no scenarios: give montecarlo.scenarios or montecarlo.grid")
        if len(set(ids)) != len(ids):
            raise ValueError(f"scenario ids must be unique, got {ids}")
        return self

    def all_scenarios(self) -> list[ScenarioConfig]:
        return list(self.scenarios) + (self.grid.scenarios() if self.grid else [])


class ResourcesConfig(Section):
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of a local Ray cluster (None: all)")
    cpus_per_trial: float = Field(1, gt=0, description="CPUs per Tune trial")
    cpus_per_task: float = Field(1, gt=0, description="CPUs per stage or Monte-Carlo task")
    gpus_per_trial: float = Field(0, ge=0, description="GPUs per Tune trial (> 0: train on CUDA)")
    gpus_per_task: float = Field(0, ge=0, description="GPUs per stage task (> 0: run on CUDA)")
    mixed_precision: bool = Field(True, description="bfloat16 autocast for training on CUDA")
    task_retries: int = Field(3, ge=0, description="times a stage or Monte-Carlo task is retried when "
                              "its worker dies")


class OutputConfig(Section):
    root: str = Field("results", min_length=1, description="local path or fsspec URL of the results")


class Config(Section):
    seed: int = Field(0, ge=0, description="run seed: training order, Tune search, Monte-Carlo trials")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    pretrain: TrainConfig = TrainConfig()
    admm: AdmmConfig = AdmmConfig()
    tune: TuneConfig = TuneConfig()
    mapping: MappingConfig = MappingConfig()
    retrain: RetrainConfig = RetrainConfig(epochs=20)
    hardware: HardwareConfig = HardwareConfig()
    montecarlo: MonteCarloConfig = MonteCarloConfig()
    resources: ResourcesConfig = ResourcesConfig()
    output: OutputConfig = OutputConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def hash(self) -> str:
        """sha256 of the canonical JSON: the config's cache key."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("pipeline.configs").iterdir()
                  if p.name.endswith(".yaml"))


def _read_yaml(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: got a {type(data).__name__}; allowed: a mapping of sections")
    return data


def _raw(source: str) -> dict:
    if source in presets():
        return _read_yaml(resources.files("pipeline.configs").joinpath(f"{source}.yaml").read_text(), source)
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config: got {source!r}, no such file; allowed: a YAML file "
                              f"or a preset ({', '.join(presets())})")
        return _read_yaml(path.read_text(), str(path))
    raise ConfigError(f"config: got {source!r}; allowed: a YAML file or a preset ({', '.join(presets())})")


def _apply_override(data: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set: got {item!r}; allowed: KEY=VALUE, e.g. admm.epochs=10")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError:
        node[parts[-1]] = value


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "config"
        value = err.get("input")
        shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{field}: got {shown}; {message}")
    return "invalid config: " + "; ".join(lines)


def validate(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def load_config(source: str = "quick", overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """A preset name or YAML path, with `a.b=value` overrides applied in order."""
    data = _raw(source)
    for item in overrides:
        _apply_override(data, item)
    return validate(data)
