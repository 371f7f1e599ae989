"""The study config: one validated object from a YAML preset plus `--set` overrides.

Every bad key or value becomes one pydantic error naming the field before Ray starts. The four
trial sections (dataset, backbone, training, evaluation) come from `trainables.config`; this module
adds what only the driver needs: the search, its space, resources, tracking and storage.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from analysis.contract import (
    CENTER_LOSS,
    DEFAULT_SEARCH_METRIC,
    ENTROPY_LOSS,
    MetricSpec,
    all_names,
    parse_shape,
)
from analysis.crosstrial import store
from analysis.crosstrial.store import resolve_tracking_uri
from analysis.errors import InputError
from study.space import ParamSpec, check_space
from trainables.config import (
    BackboneConfig,
    DatasetConfig,
    EvaluationConfig,
    TrainingConfig,
    TrialConfig,
    flat_key_owner,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "1-64 characters from letters, digits, '_', '.', '-', starting with a letter or digit"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AshaConfig(_Section):
    """Asynchronous successive halving over epochs (needs evaluation.eval_every = 1)."""

    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)


class SearchConfig(_Section):
    """How Optuna proposes trials and what it optimises."""

    sampler: Literal["tpe", "random", "cmaes", "grid", "nsga2"] = "tpe"
    num_samples: int | None = Field(None, ge=1)  # None: the grid's size, else 8
    max_concurrent: int = Field(2, ge=1)
    # One metric, or a list for a multi-objective search (one mode per metric, e.g. maximise
    # 5w5s NCC accuracy and source test accuracy): Optuna then keeps a Pareto set, not a best.
    metric: str | list[str] = DEFAULT_SEARCH_METRIC
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    seed: int = 0
    asha: AshaConfig | None = None
    max_failures: int = Field(2, ge=0)  # retries of a trial whose worker died
    # A new trial reuses a finished trial's worker process (saves importing torch and timm);
    # off, every trial gets a fresh worker, which also spreads short trials over nodes.
    reuse_actors: bool = True
    # The Optuna RDB storage that keeps the study (optuna.load_study, optuna-dashboard), e.g. a
    # team's postgresql://user:pass@host/db; None: sqlite optuna.db beside the MLflow store.
    storage: str | None = None
    # Configurations tried first, in order (e.g. the paper's recipe): {flat key: value} over
    # the searched keys, each value inside its spec.
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)


    def metrics(self) -> list[str]:
        """The search metrics as a list (one for a single objective)."""
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    def modes(self) -> list[str]:
        """The modes as a list, one per metric."""
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)

    @property
    def multi_objective(self) -> bool:
        """Whether the search optimises more than one metric (a Pareto set, not a best)."""
        return len(self.metrics()) > 1


class ResourcesConfig(_Section):
    """What one trial holds; fractions allowed (0.25 GPU lets four trials share one)."""

    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("more than one GPU per trial must be a whole number (Ray's rule)")
        return v


class TrackingConfig(_Section):
    """Where MLflow writes. uri None: $MLFLOW_TRACKING_URI, else sqlite under storage.root."""

    uri: str | None = None
    experiment: str = Field("nctune", min_length=1)


class StorageConfig(_Section):
    """Local study folders under `root`; Ray results under `ray` (may be s3://, gs://, NFS)."""

    root: str = "nctune-runs"
    ray: str | None = None  # None: <root>/ray


class StudyConfig(_Section):
    """A whole study: what one trial does, what is searched and where it all goes."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "demo"
    description: str = ""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        check_registered(self.dataset.name, self.backbone.name)
        check_space(self.space, self.trial_config().flat(), self.search.sampler)
        check_evaluation(self.evaluation)
        check_points(self.search.points_to_evaluate, self.space)
        produced = self.metric_names()
        for metric in self.search.metrics():
            if metric not in produced:
                raise ValueError(
                    f"search.metric: no trial reports '{metric}'; the evaluation section "
                    f"produces e.g. {', '.join(sorted(m for m in produced if '/acc' in m))}"
                )
        check_objectives(self.search)
        if self.training.device == "cuda" and self.resources.gpus_per_trial == 0:
            raise ValueError(
                "training.device: 'cuda' but resources.gpus_per_trial is 0: Ray would not count "
                "the GPU the trials use; ask for a share (e.g. 0.25) or use device 'auto'"
            )
        if self.search.asha is not None and self.evaluation.eval_every != 1:
            raise ValueError(
                "search.asha: successive halving compares trials every epoch, so it needs "
                f"evaluation.eval_every = 1 (got {self.evaluation.eval_every})"
            )
        if self.search.sampler == "grid" and self.search.num_samples not in (
            None,
            grid_size(self.space),
        ):
            raise ValueError(
                f"search.num_samples: a grid of {grid_size(self.space)} points runs each once; "
                f"leave it unset or set it to {grid_size(self.space)} "
                f"(got {self.search.num_samples})"
            )
        return self

    def trial_config(self) -> TrialConfig:
        """The four trial sections as one TrialConfig: what every trial receives, flattened."""
        return TrialConfig(
            dataset=self.dataset,
            backbone=self.backbone,
            training=self.training,
            evaluation=self.evaluation,
        )

    def metric_spec(self) -> MetricSpec:
        """What a trial of this study measures (see analysis.contract); a collapse control's
        loss is listed when the base config or any value the space may give turns it on."""
        spec = self.trial_config().metric_spec()
        losses = list(spec.control_losses)
        for key, name in (("center_loss", CENTER_LOSS), ("feature_entropy", ENTROPY_LOSS)):
            spec_ = self.space.get(key)
            if spec_ is not None and name not in losses and any(
                    isinstance(v, int | float) and v > 0 for v in spec_.candidates()):
                losses.append(name)
        return dataclasses.replace(spec, control_losses=tuple(losses))

    def metric_names(self) -> set[str]:
        """Every metric name a trial of this study reports: `nctune metrics` prints these."""
        return all_names(self.metric_spec())

    @property
    def num_samples(self) -> int:
        """Trials to run: the grid's size for a grid search, else search.num_samples (default 8)."""
        if self.search.sampler == "grid":
            return grid_size(self.space)
        return self.search.num_samples or 8

    def searched(self) -> list[str]:
        """Flat keys that vary across trials (fixed specs are not searched)."""
        return [k for k, spec in self.space.items() if spec.type != "fixed"]

    # ---- paths -------------------------------------------------------------------------------
    def root_dir(self) -> Path:
        """The storage root, absolute (trials chdir; paths must not depend on the cwd)."""
        return Path(self.storage.root).expanduser().resolve()

    def study_dir(self) -> Path:
        """This study's folder: study.json, config.yaml, the report."""
        return store.study_dir(self.root_dir(), self.name)

    def ray_storage(self) -> str:
        """Where Ray Tune keeps results and checkpoints: storage.ray (a URI or a path) or
        <root>/ray."""
        if self.storage.ray is None:
            return str(self.root_dir() / "ray")
        if "://" in self.storage.ray:
            return self.storage.ray
        return str(Path(self.storage.ray).expanduser().resolve())

    def tracking_uri(self) -> str:
        """The MLflow store this study writes to (analysis.crosstrial.store resolves every URI)."""
        return resolve_tracking_uri(self.tracking.uri, self.root_dir())


def check_objectives(search: SearchConfig) -> None:
    """One mode per metric, no metric twice; multi-objective only where Optuna and Tune can."""
    metrics, modes = search.metrics(), search.modes()
    if len(metrics) != len(modes) and not isinstance(search.mode, str):
        raise ValueError(f"search.mode: {len(modes)} modes for {len(metrics)} metrics; give "
                         "one mode per metric")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"search.metric: a metric is listed twice ({', '.join(metrics)})")
    if search.multi_objective:
        if isinstance(search.mode, str):
            raise ValueError("search.mode: a list of metrics needs a list of modes, one each "
                             f"(e.g. [max, min]); got {search.mode!r}")
        if search.sampler == "cmaes":
            raise ValueError("search.sampler: cmaes optimises one metric; for a list of metrics "
                             "use tpe, nsga2, random or grid")
        if search.asha is not None:
            raise ValueError("search.asha: successive halving ranks trials by one metric; "
                             "leave it out of a multi-objective search")


def check_points(points: list[dict[str, Any]], space: dict[str, ParamSpec]) -> None:
    """Warm-start points name exactly the searched keys, each value inside its spec."""
    searched = {k: spec for k, spec in space.items() if spec.type != "fixed"}
    for i, point in enumerate(points):
        where = f"search.points_to_evaluate[{i}]"
        if set(point) != set(searched):
            missing, extra = sorted(set(searched) - set(point)), sorted(set(point) - set(searched))
            raise ValueError(f"{where}: a point sets every searched key and nothing else "
                             f"(searched: {', '.join(searched)}"
                             + (f"; missing: {', '.join(missing)}" if missing else "")
                             + (f"; not searched: {', '.join(extra)}" if extra else "") + ")")
        for key, value in point.items():
            dist = searched[key].distribution()
            try:
                inside = dist._contains(dist.to_internal_repr(value))
            except (ValueError, TypeError):
                inside = False
            if not inside:
                raise ValueError(f"{where}.{key}: {value!r} is outside the space "
                                 f"({allowed(searched[key])})")


def allowed(spec: ParamSpec) -> str:
    """What a spec allows, in words: `one of [1, 2]` or `1e-05 to 0.01, log scale`."""
    if spec.type == "categorical":
        return f"one of {spec.values}"
    text = f"{spec.low:g} to {spec.high:g}"
    if spec.step:
        text += f" in steps of {spec.step:g}"
    return text + (", log scale" if spec.type == "log_float" or spec.log else "")


def check_registered(dataset: str, backbone: str) -> None:
    """Unknown data set or backbone names fail here, listing the known ones."""
    from trainables.backbones import list_backbones
    from trainables.data import list_datasets

    if dataset not in list_datasets():
        raise ValueError(f"dataset.name: '{dataset}' is not a known data set; known: "
                         f"{', '.join(list_datasets())}")
    if backbone not in list_backbones():
        raise ValueError(f"backbone.name: '{backbone}' is not a known backbone; known: "
                         f"{', '.join(list_backbones())}")


def check_evaluation(ev: EvaluationConfig) -> None:
    """Episode shapes parse (the contract's one parser) and classifiers are registered."""
    from analysis.measure.fewshot import list_classifiers

    for shape in ev.shapes:
        try:
            parse_shape(shape)
        except InputError as exc:
            raise ValueError(f"evaluation.shapes: {exc}") from None
    known = list_classifiers()
    for clf in ev.classifiers:
        if clf not in known:
            raise ValueError(
                f"evaluation.classifiers: '{clf}' is not a few-shot classifier; known: "
                f"{', '.join(known)}"
            )


def grid_size(space: dict[str, ParamSpec]) -> int:
    """Points in the grid the categorical specs span (the product of their sizes)."""
    size = 1
    for spec in space.values():
        if spec.type == "categorical":
            size *= len(spec.values)
    return size


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as a YAML scalar or list)."""
    import yaml

    if "=" not in text:
        raise ValueError(f"--set: '{text}' is not key=value (e.g. training.lr=0.1)")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ValueError(f"--set: '{text}' names no field")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted path in a nested dict (creating sections); validation comes after."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"--set {text}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def explain_error(err: Any) -> str:
    """A pydantic error as `field: problem (got value)`, with a suggestion for unknown keys."""
    loc = [str(p) for p in err["loc"]]
    field = ".".join(loc)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:  # whole-config checks already name their field
        return msg
    if err["type"] == "extra_forbidden":
        known = known_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{field}: unknown key; {hint}known: {', '.join(known)}"
    return f"{field}: {msg} (got {err.get('input')!r})"


def known_keys(path: list[str]) -> list[str]:
    """Field names of the section at `path` in the study config."""
    model: Any = StudyConfig
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        if part == "space":
            return sorted(flat_key_owner())
        args = [a for a in getattr(model, "__args__", ()) if hasattr(a, "model_fields")]
        model = args[0] if args else model
    return sorted(getattr(model, "model_fields", {}))
