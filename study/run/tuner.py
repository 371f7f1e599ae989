"""Ray and the Tuner: start (or join) Ray, then Tuner(with_resources(pretrain), OptunaSearch, ...).

Written for Ray 2.60's Tune API (ray.tune.report / RunConfig / Checkpoint). Train V2 is on by
default in Ray 2.60: ray.train.report inside a Tune function fails the trial and
ray.train.RunConfig crashes a Tuner, so everything here comes from ray.tune.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from analysis.crosstrial import store
from study.config import StudyConfig
from study.probe.keep import KeepEvaluatedWeights
from study.run.allocator import settle_allocator
from study.run.compact import CompactFinishedTrials
from study.run.optuna_store import TRIAL_ID_ATTR, mark_orphans, open_storage, storage_url
from study.run.progress import ProgressPrinter
from study.run.sqlite_cache import cap_sqlite_cache
from study.run.state import StudyState
from study.run.trial_logger import MLflowTrialLogger
from study.space import fixed_values, optuna_space
from trainables.pretrain import pretrain


def init_ray(address: str | None, *, dashboard: bool = False) -> None:
    """Join `address` (or $RAY_ADDRESS); else start a local Ray that listens on 127.0.0.1 only,
    with token authentication on (Ray's default, never turned off here) and no dashboard unless
    asked for (then on 127.0.0.1 too). First the driver's allocator is settled (allocator.py),
    before Ray's threads take their arenas, and its SQLite page caches capped (sqlite_cache.py)."""
    import ray

    settle_allocator()
    cap_sqlite_cache()
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    from ray._private import ray_constants

    # Ray warns that token authentication is on; the header says so in plain words.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    # ray.init resolves 127.0.0.1 to this machine's routable address on Linux, and its gRPC
    # servers (GCS, raylet, workers) then listen on 0.0.0.0. With ENABLE_RAY_CLUSTER off, as on
    # macOS and Windows, every one of them binds 127.0.0.1 (ray/_private/services.py).
    single_node, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        # address="local": a new Ray of our own; without it ray.init joins whatever cluster
        # `ray start` last recorded in /tmp/ray, which the user did not ask for.
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 log_to_driver=False,
                 configure_logging=True, logging_level=logging.WARNING)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = single_node


class StudySearch(OptunaSearch):
    """OptunaSearch on the study's persisted Optuna study (study.run.optuna_store), made resumable.

    Trials report training metrics every epoch but evaluate only every `eval_every` epochs;
    stock OptunaSearch indexes result[metric] on every result and would fail those. A trial
    restarted from a checkpoint reports some iterations again, and may complete again after
    the storage recorded its first completion: neither is told twice. Its whole __dict__ (the
    sampler's RNG, the Optuna study, `_reported`) is pickled with the experiment, which is what
    makes a resumed study propose what an uninterrupted one would.
    """

    def suggest(self, trial_id: str) -> dict | None:
        """Ask Optuna, and tag the new Optuna trial with the Tune trial id (MLflow's tag too)."""
        new = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TRIAL_ID_ATTR, trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Report the metric as the trial's intermediate value at this epoch, once."""
        if not (isinstance(self.metric, str) and self.metric in result):
            return
        reported = self.__dict__.setdefault("_reported", {})
        step = int(result.get("training_iteration", 0))
        if step <= reported.get(trial_id, 0) or self._finished(trial_id):
            return
        reported[trial_id] = step
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """Tell Optuna the final value(s), unless the storage has them from before a resume."""
        if trial_id in self._ot_trials and self._finished(trial_id):
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def restore(self, checkpoint_path: str) -> None:
        """Restore the searcher, then fail storage trials proposed after Tune's snapshot."""
        super().restore(checkpoint_path)
        known = {t._trial_id for t in self._ot_trials.values()}
        mark_orphans(self.study, known)

    def _finished(self, trial_id: str) -> bool:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return False
        state = self.study._storage.get_trial(ot_trial._trial_id).state
        return bool(state.is_finished())

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (created with the searcher: the space is given up front)."""
        assert self._ot_study is not None
        return self._ot_study


class ResumableNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II that pickles: Optuna 5 keeps a thread lock in it, and Ray Tune pickles the
    searcher (with its sampler and its random state) into every experiment snapshot."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        import threading

        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def make_sampler(cfg: StudyConfig) -> optuna.samplers.BaseSampler:
    """The Optuna sampler `search.sampler` names, seeded with `search.seed`."""
    seed = cfg.search.seed
    if cfg.search.sampler == "grid":
        grid = {k: s.values for k, s in cfg.space.items() if s.type == "categorical"}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if cfg.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.search.sampler == "nsga2":
        return ResumableNSGAII(seed=seed)
    if cfg.search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


KEEP_CHECKPOINTS = 2  # per trial: the newest two (one may be mid-write when a node dies)


def trainable(cfg: StudyConfig) -> Any:
    """The wrapped trainable; `resume` must build exactly the same one."""
    resources = {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial}
    return tune.with_resources(pretrain, resources)


def trial_dirname(trial: Any) -> str:
    """A trial's folder name under the Ray results."""
    return f"t{trial.trial_id}"  # short: deep paths break on some filesystems


def base_param_space(cfg: StudyConfig) -> dict[str, Any]:
    """Constant trial keys (every flat key not searched), fixed specs applied."""
    flat = cfg.trial_config().flat()
    flat.update(fixed_values(cfg.space))
    for key in optuna_space(cfg.space):
        flat.pop(key, None)
    return flat


def study_callbacks(cfg: StudyConfig, state: StudyState,
                    extra: Sequence[tune.Callback] = ()) -> list[tune.Callback]:
    """The MLflow logger, the progress line, the caller's own callbacks (benchmarks), and last
    the compactor that drops an ended trial's metrics from Tune's memory (study.run.compact)."""
    tracker = MLflowTrialLogger(state.tracking_uri, state.experiment_id, state.parent_run_id,
                                cfg.name, cfg.searched(), state.dataset)
    progress = ProgressPrinter(cfg.num_samples, cfg.search.metrics(), cfg.search.modes(),
                               label_of=tracker.label)
    # training.keep_checkpoints: evaluated keeps every evaluated epoch's weights for `nctune
    # probe`, beside Tune's newest two: Tune's own retention, and so resume, stays as it is.
    keep = [KeepEvaluatedWeights()] if cfg.training.keep_checkpoints == "evaluated" else []
    compact = CompactFinishedTrials(cfg.search.metrics(), cfg.searched())
    return [tracker, progress, *keep, *extra, compact]


def quiet_ray_output() -> None:
    """Ray Tune's tables and warnings off: our progress line says what a user needs."""
    # Our own progress line replaces Ray's tables; results without the search metric (epochs
    # that are not evaluated) are expected; a snapshot per checkpoint of a fast trial is fine
    # on local disk, so Ray's warning about it is noise.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_search(cfg: StudyConfig, state: StudyState, *, resumed: bool = False) -> StudySearch:
    """The searcher on the study's Optuna storage, warm-started with search.points_to_evaluate.

    `resumed`: the driver died before Tune saved anything; the storage may hold the warm-start
    points it enqueued (not enqueued again) and trials it proposed (failed: none ran).
    """
    storage = open_storage(state.optuna_storage or storage_url(cfg))
    points = [dict(p) for p in cfg.search.points_to_evaluate]
    if resumed and cfg.name in {s.study_name for s in storage.get_all_studies()}:
        points = []  # enqueued by the first start: waiting there, or proposed already
    search = StudySearch(space=optuna_space(cfg.space), metric=objective(cfg.search.metrics()),
                         mode=objective(cfg.search.modes()), sampler=make_sampler(cfg),
                         study_name=cfg.name, storage=storage, points_to_evaluate=points)
    study = search.study
    if resumed:
        mark_orphans(study, known=set())
    with warnings.catch_warnings():  # experimental since Optuna 3.2, unchanged through 5.x
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(cfg.search.metrics())  # optuna-dashboard's axis, not "Objective 0"
    for key, value in {store.TAG_STUDY: cfg.name, "mlflow.experiment": state.experiment,
                       "mlflow.parent_run_id": state.parent_run_id,
                       store.TAG_METRIC: ",".join(cfg.search.metrics())}.items():
        study.set_user_attr(key, value)
    return search


def objective(values: list[str]) -> str | list[str]:
    """One metric (or mode) as a string, several as a list: OptunaSearch's two forms."""
    return values[0] if len(values) == 1 else values


def build_tuner(cfg: StudyConfig, state: StudyState, callbacks: Sequence[tune.Callback] = (),
                *, resumed: bool = False) -> tune.Tuner:
    """A new study's Tuner; `callbacks` run after nctune's own (they are pickled with it).
    `resumed`: a study resumed before Tune saved any state (see make_search)."""
    quiet_ray_output()
    search = make_search(cfg, state, resumed=resumed)
    scheduler = None
    if cfg.search.asha is not None:
        # A single objective (config-checked): successive halving ranks by one metric.
        scheduler = ASHAScheduler(time_attr="epoch", metric=cfg.search.metrics()[0],
                                  mode=cfg.search.modes()[0], max_t=cfg.training.epochs,
                                  grace_period=cfg.search.asha.grace_period,
                                  reduction_factor=cfg.search.asha.reduction_factor)
    tune_config = tune.TuneConfig(
        search_alg=search, scheduler=scheduler, num_samples=cfg.num_samples,
        max_concurrent_trials=cfg.search.max_concurrent, trial_dirname_creator=trial_dirname,
        # A new trial reuses a finished trial's worker: importing torch + timm costs seconds.
        reuse_actors=cfg.search.reuse_actors,
    )
    run_config = tune.RunConfig(
        name=cfg.name, storage_path=state.ray_path,
        callbacks=study_callbacks(cfg, state, callbacks),
        failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
        verbose=0,
    )
    return tune.Tuner(trainable(cfg), param_space=base_param_space(cfg),
                      tune_config=tune_config, run_config=run_config)


def restore_tuner(cfg: StudyConfig, state: StudyState) -> tune.Tuner:
    """The Tuner of a stopped study from its saved state (searcher, callbacks, trials)."""
    quiet_ray_output()
    path = os.path.join(state.ray_path, cfg.name)
    fill_checkpoint_gaps(Path(path))
    return tune.Tuner.restore(path, trainable=trainable(cfg), resume_errored=False,
                              restart_errored=False, resume_unfinished=True)


def fill_checkpoint_gaps(experiment: Path) -> None:
    """Put an empty folder where a restored trial's oldest kept checkpoint may be missing.

    Tune keeps KEEP_CHECKPOINTS per trial and forces a snapshot every KEEP_CHECKPOINTS new
    ones, so the snapshot a killed driver left can list one checkpoint it deleted since. Once
    restored, Tune deletes that one again when the next checkpoint arrives, fails on the missing
    folder (FileNotFoundError) and logs the whole result as an error. Local storage only.
    """
    if not experiment.is_dir():
        return
    for trial in experiment.glob("t*"):
        found = [int(p.name.rsplit("_", 1)[1]) for p in trial.glob("checkpoint_*")
                 if p.name.rsplit("_", 1)[1].isdigit()]
        if found:
            newest = max(found)
            for index in range(max(0, newest - KEEP_CHECKPOINTS), newest):
                (trial / f"checkpoint_{index:06d}").mkdir(exist_ok=True)


def can_restore(state: StudyState) -> bool:
    """Whether Tune saved the study's state (not when it stopped before any trial started)."""
    return tune.Tuner.can_restore(os.path.join(state.ray_path, state.name))
