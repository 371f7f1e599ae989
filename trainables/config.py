"""The trial config: the single source of truth for one Ray trial.

The study config (`study.config`) groups it into sections (dataset, backbone, training,
evaluation) for YAML presets; a trial receives it flattened, one key per field, which is also
what Ray Tune's param_space and MLflow's params hold. Field names are unique across sections;
the two `name` fields flatten to `dataset` and `backbone`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from analysis.contract import (
    CENTER_LOSS,
    ENTROPY_LOSS,
    ESTIMATORS,
    SOURCE_TEST,
    SOURCE_TRAIN,
    TARGET,
    MetricSpec,
    all_names,
    is_shape,
    parse_shape,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(_Section):
    """Which images, split how (see trainables.data)."""

    name: str = "glyphs"
    root: str | None = None  # folder with the files of a real data set
    download: bool = False  # let torchvision download where it can (never in tests)
    split_mode: Literal["random", "canonical"] = "random"
    split_seed: int = 0
    num_source_classes: int = Field(64, ge=2)
    num_target_classes: int = Field(40, ge=2)
    source_train_per_class: int = Field(15, ge=1)
    source_test_per_class: int = Field(5, ge=1)
    target_per_class: int = Field(20, ge=2)
    image_size: int = Field(32, ge=8, le=512)
    data_strength: float = Field(1.0, ge=0.0, le=3.0)  # within-class variety of generated sets
    # Canonical splits with train/val/test parts (cifar-fs, fc100, mini-imagenet): the part(s)
    # target classes come from; source classes always come from the train part.
    target_part: Literal["test", "val", "val+test"] = "test"
    # `folder` data set, canonical split: JSON {"source": [class, ...], "target": [...]};
    # default <root>/split.json.
    split_file: str | None = None


class BackboneConfig(_Section):
    """Which timm network (see trainables.backbones)."""

    name: str = "resnet18"
    width: float = Field(1.0, ge=0.125, le=8.0)
    small_stem: bool = True  # 3x3 stride-1 stem, no max-pool: for 32x32 inputs
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)


class TrainingConfig(_Section):
    """How the backbone is pretrained on the source classes."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    warmup_epochs: int = Field(1, ge=0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    mixup_alpha: float = Field(0.0, ge=0.0)
    aug_strength: float = Field(1.0, ge=0.0, le=3.0)
    # Collapse controls (trainables.collapse_controls, with their papers and formulas); 0/False
    # = off, and then training is exactly what it was without them.
    center_loss: float = Field(0.0, ge=0.0)  # Wen et al. 2016: induces collapse
    etf_head: bool = False  # fixed simplex-ETF classifier: induces collapse
    feature_entropy: float = Field(0.0, ge=0.0)  # KoLeo entropy of the features: mitigates it
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    compile: bool = False
    # Checkpoints kept per trial for `nctune probe`: "final" keeps Tune's newest two (the final
    # one always among them); "evaluated" keeps every epoch's. Default "final": a paper preset's
    # checkpoint is ~100 MB (weights + momentum), x epochs x trials is tens of GB per study.
    keep_checkpoints: Literal["final", "evaluated"] = "final"


class EvaluationConfig(_Section):
    """What is measured every `eval_every` epochs (and always at the last one)."""

    eval_every: int = Field(1, ge=1)
    features_per_class: int = Field(50, ge=2)  # cap on source-train images per class
    shapes: list[str] = Field(default_factory=lambda: ["5w1s", "5w5s"])
    episodes: int = Field(600, ge=1)
    queries: int = Field(15, ge=1)
    classifiers: list[str] = Field(default_factory=lambda: ["ncc", "ncc_l2", "ncc_raw", "logreg"])
    probe_episodes: int = Field(200, ge=1)  # episodes the (slower) logistic probe sees
    episode_seed: int = 0
    # Taps measured per layer (trainables.taps): "stages" = every stage of the backbone (timm's
    # feature_info), "none" = the penultimate features only, or a list of tap names.
    layers: Literal["stages", "none"] | list[str] = "stages"
    layers_source_test: bool = False  # per-tap statistics on source_test too
    # Transferability estimators on the target features (analysis.measure.transfer), logged as
    # transfer/<name>/target; all by default (together about a tenth of an evaluation).
    estimators: list[str] = Field(default_factory=lambda: list(ESTIMATORS))

    @field_validator("estimators")
    @classmethod
    def _known_estimators(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in ESTIMATORS]
        if unknown:
            raise ValueError(f"{unknown} not known; choose from "
                             f"{list(ESTIMATORS)} (or [] for none)")
        return list(dict.fromkeys(value))

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_word(cls, value: Any) -> Any:
        if (value not in ("stages", "none") if not isinstance(value, list)
                else not all(isinstance(v, str) for v in value)):
            raise ValueError("use 'stages' (every stage of the backbone), 'none' (the "
                             "penultimate features only) or a list of tap names, e.g. "
                             "[layer2, layer3]")
        return value


SECTIONS: dict[str, type[_Section]] = {
    "dataset": DatasetConfig,
    "backbone": BackboneConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
}


class TrialConfig(BaseModel):
    """All four sections; `flat()` / `from_flat()` convert to and from the flat trial dict."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _episodes_fit_target(self) -> TrialConfig:
        """Every episode shape fits the target split, checked before any trial starts."""
        check_episodes_fit(self.dataset, self.evaluation)
        check_controls(self)
        if isinstance(self.evaluation.layers, list):  # names checked against the backbone
            self.taps()
        return self

    def taps(self) -> tuple[str, ...]:
        """The backbone taps `evaluation.layers` selects, input to output (trainables.taps)."""
        if self.evaluation.layers == "none":
            return ()
        from trainables.taps import backbone_taps, select_taps  # torch: only when needed

        bb = self.backbone
        return select_taps(self.evaluation.layers, backbone_taps(bb.name, bb.small_stem),
                           bb.name)

    def metric_spec(self) -> MetricSpec:
        """What this trial's evaluation measures, for the metric contract's name list."""
        ev = self.evaluation
        layer_splits = (SOURCE_TRAIN, *([SOURCE_TEST] if ev.layers_source_test else []), TARGET)
        tr = self.training
        controls = (*([CENTER_LOSS] if tr.center_loss > 0 else []),
                    *([ENTROPY_LOSS] if tr.feature_entropy > 0 else []))
        return MetricSpec(shapes=tuple(ev.shapes), classifiers=tuple(ev.classifiers),
                          taps=self.taps(), layer_splits=layer_splits,
                          estimators=tuple(ev.estimators), control_losses=controls)

    def metric_names(self) -> set[str]:
        """Every metric name a trial of this config reports (the contract's list)."""
        return all_names(self.metric_spec())

    def flat(self) -> dict[str, Any]:
        """One key per field; `dataset.name` -> `dataset`, `backbone.name` -> `backbone`."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            for key, value in getattr(self, section).model_dump().items():
                out[section if key == "name" else key] = value
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> TrialConfig:
        """Inverse of `flat()`; unknown keys are an error."""
        owner = flat_key_owner()
        parts: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        unknown = sorted(k for k in flat if k not in owner)
        if unknown:
            raise ValueError(f"unknown trial config keys {unknown}; known: {sorted(owner)}")
        for key, value in flat.items():
            section, field = owner[key]
            parts[section][field] = value
        return cls.model_validate(parts)


def check_episodes_fit(data: DatasetConfig, ev: EvaluationConfig) -> None:
    """An n-way episode needs n target classes: the widest shape must fit the target split.

    Without this the episode bank fails after the data set is built, with a message that names
    neither config field ("n_way=5 but the labels hold only 3 classes"). Shapes that do not
    parse are left to the study config's own check, which names them. (Shots plus queries
    against `dataset.target_per_class` are left to the episode bank: a study may search
    `queries`, and tests use a too-large value to make one trial fail on bad input.)

    Raises:
        ValueError: a shape with more ways than `dataset.num_target_classes`; the message names
            both fields, the values and what to change.
    """
    parsed = {s: parse_shape(s) for s in ev.shapes if is_shape(s)}
    if not parsed:
        return
    widest = max(parsed, key=lambda s: parsed[s][0])
    n_way = parsed[widest][0]
    if n_way > data.num_target_classes:
        fits = [s for s, (n, _) in parsed.items() if n <= data.num_target_classes]
        raise ValueError(
            f"evaluation.shapes: '{widest}' draws {n_way} classes per episode but "
            f"dataset.num_target_classes is {data.num_target_classes}; set "
            f"dataset.num_target_classes to at least {n_way} or keep only shapes of at most "
            f"{data.num_target_classes} ways in evaluation.shapes"
            + (f" (here: {', '.join(fits)})" if fits else "")
        )


def check_controls(cfg: TrialConfig) -> None:
    """The collapse controls fit the rest of the config (trainables.collapse_controls).

    Raises:
        ValueError: `training.etf_head` on a backbone whose feature width is below the number of
            source classes minus one (no simplex ETF fits), or `training.center_loss` with mixup
            (the centres need one hard label per image); the message names the field.
    """
    tr = cfg.training
    if tr.center_loss > 0 and tr.mixup_alpha > 0:
        raise ValueError(f"training.center_loss: {tr.center_loss} needs hard labels, but "
                         f"training.mixup_alpha is {tr.mixup_alpha}; set one of them to 0")
    if not tr.etf_head:
        return
    from trainables.backbones import create_backbone  # torch: only when the head is asked for

    bb = cfg.backbone
    dim = create_backbone(bb.name, num_classes=2, in_chans=1, width=bb.width,
                          small_stem=bb.small_stem).feature_dim
    classes = cfg.dataset.num_source_classes
    if dim < classes - 1:
        raise ValueError(f"training.etf_head: a simplex ETF of {classes} source classes needs a "
                         f"feature width of at least {classes - 1}, but {bb.name} at width "
                         f"{bb.width} has {dim}; widen backbone.width, use fewer "
                         "dataset.num_source_classes, or set training.etf_head to false")


def flat_key_owner() -> dict[str, tuple[str, str]]:
    """Map each flat key to its (section, field)."""
    owner: dict[str, tuple[str, str]] = {}
    for section, model in SECTIONS.items():
        for field in model.model_fields:
            owner[section if field == "name" else field] = (section, field)
    return owner
