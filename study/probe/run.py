"""`nctune probe STUDY --target DATASET`: a study's trained backbones measured on another domain.

Reading order: checks (nothing is logged until every one passed: the study, its checkpoints,
each checkpoint loads as plain tensors, the target data set, its episode bank, the probe
name), then the Ray tasks with a progress line, each result logged into its trial's own child
run as `probe/<name>/<metric>` (step = the checkpoint's epoch), then the probe's report.

A probe name is written once. MLflow cannot delete a logged metric, so the same name with other
settings (another target, other images, another episode bank) is refused; the same name with
the same settings completes what an interrupted probe left (steps already in a run are
skipped), so no step is ever logged twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from analysis import contract
from analysis.crosstrial import store
from analysis.crosstrial.runs import StudyRuns
from analysis.errors import InputError
from analysis.measure.fewshot_episodes import EpisodeBank
from study.probe.keep import FOLDER
from study.run.state import StudyState
from trainables.config import DatasetConfig, EvaluationConfig
from trainables.data import Split
from trainables.evaluate import build_banks
from trainables.probe import ProbeJob, ProbeResult, read_checkpoint
from trainables.probe_data import load_target

PRIMARY = contract.DEFAULT_SEARCH_METRIC  # fewshot/5w5s/ncc/acc: the transfer target
TAG = store.TAG_PROBE_PREFIX  # + name: on the parent, the probe's settings; on a child, its status


@dataclass
class ProbeTarget:
    """The probe's data, built once on the driver and shared by every task."""

    name: str
    split: Split
    manifest: dict[str, Any]
    banks: dict[str, EpisodeBank]
    evaluation: EvaluationConfig

    def bank_hashes(self) -> dict[str, str]:
        """Shape -> episode bank hash: every job of this probe uses these episodes."""
        return {shape: bank.hash for shape, bank in self.banks.items()}

    def settings(self, epochs: str) -> dict[str, Any]:
        """What identifies the probe: stored on the parent run, compared on a rerun."""
        m = self.manifest
        return {"dataset": m["dataset"], "classes": m["classes"], "per_class": m["per_class"],
                "image_size": m["image_size"], "content_hash": m["content_hash"],
                "episode_banks": self.bank_hashes(), "epochs": epochs}


def target_config(dataset: str, overrides: list[str], image_size: int) -> tuple[
        DatasetConfig, bool]:
    """The target's DatasetConfig from `--target` and `--set dataset.k=v`; and whether every
    class is probed (num_target_classes not set). The image size defaults to the backbone's."""
    from study.config import parse_override

    fields: dict[str, Any] = {"name": dataset}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) != 2 or path[0] != "dataset":
            raise InputError(f"--set {text}: a probe sets only dataset.<field>; known: "
                             f"{', '.join(sorted(DatasetConfig.model_fields))}")
        fields[path[1]] = value
    fields.setdefault("image_size", image_size)
    from trainables.data import list_datasets

    if dataset not in list_datasets():
        raise InputError(f"--target: {dataset!r} is not a known data set; known: "
                         f"{', '.join(list_datasets())}")
    try:
        cfg = DatasetConfig.model_validate(fields)
    except ValidationError as exc:  # name the field and the value, as `nctune run` does
        from study.config import explain_error

        lines = [explain_error({**e, "loc": ("dataset", *e["loc"])}) for e in exc.errors()]
        raise InputError("--set: " + "; ".join(lines)) from None
    return cfg, "num_target_classes" not in fields


def prepare_target(name: str, dataset: DatasetConfig, all_classes: bool,
                   ev: EvaluationConfig) -> ProbeTarget:
    """Load the target and draw the probe's episode bank.

    Raises:
        InputError: bad data set options, or fewer classes (or images) than the largest episode
            shape needs.
    """
    split, manifest = load_target(dataset, all_classes=all_classes)
    shapes = {s: contract.parse_shape(s) for s in ev.shapes}
    widest = max(shapes.items(), key=lambda kv: kv[1][0])
    if split.num_classes < widest[1][0]:
        raise InputError(f"--target {dataset.name}: {split.num_classes} classes, fewer than "
                         f"the {widest[1][0]} ways of evaluation.shapes {widest[0]}; probe a "
                         "data set with more classes (or set dataset.num_target_classes higher)")
    needed = max(k for _, k in shapes.values()) + ev.queries
    if dataset.target_per_class < needed:
        raise InputError(f"dataset.target_per_class: {dataset.target_per_class} images per "
                         f"class, but an episode takes up to {needed} (k shots + "
                         f"{ev.queries} queries); set at least {needed}")
    return ProbeTarget(name, split, manifest, build_banks(split, ev), ev)


def describe_target(t: ProbeTarget) -> str:
    """`digits: 10 classes x 20 images, 1 channel 16x16, episode banks 5w1s=ab12.., ...`."""
    m = t.manifest
    banks = ", ".join(f"{s}={h}" for s, h in t.bank_hashes().items())
    chan = "1 channel" if m["channels"] == 1 else f"{m['channels']} channels"
    return (f"{m['dataset']}: {m['classes']} classes x {m['per_class']} images, {chan} "
            f"{m['image_size']}x{m['image_size']}; episode banks {banks}")


# ---- the study's trials and checkpoints -----------------------------------------------------
def trial_folder(ray_path: str, study: str, trial_id: str) -> Path:
    """Where Tune keeps a trial's checkpoints (study.run.tuner names trial folders t<trial_id>)."""
    return Path(ray_path) / study / f"t{trial_id}"


def checkpoints_of(folder: Path, epochs: str, eval_every: int, planned: int) -> list[
        tuple[int, str]]:
    """(epoch, file) of the checkpoints to probe, each read once (weights_only) to check it.

    Files: Tune's kept checkpoints (`checkpoint_*/trial.pt`) and the weights kept of every
    evaluated epoch (`evaluated/epoch_*.pt`, study.probe.keep). `final`: the newest epoch;
    `all`: every evaluated epoch found.

    Raises:
        InputError: a file that does not load as plain tensors.
    """
    found: dict[int, str] = {}
    for file in [*sorted(folder.glob("checkpoint_*/trial.pt")),
                 *sorted(folder.glob(f"{FOLDER}/epoch_*.pt"))]:
        found[int(read_checkpoint(file)["epoch"])] = str(file)
    chosen = sorted(found.items())
    if epochs == "final":
        return chosen[-1:]
    return [(e, f) for e, f in chosen if e % eval_every == 0 or e == planned]


def trial_jobs(study: StudyRuns, ray_path: str, epochs: str) -> tuple[list[ProbeJob], list[str]]:
    """A job per completed trial with checkpoints; and notes on the trials left out.

    Raises:
        InputError: no completed trial has a checkpoint on this machine.
    """
    jobs, notes = [], []
    for row in study.trials.itertuples():
        if row.status != "completed":
            notes.append(f"{row.run_name}: left out (status {row.status})")
            continue
        folder = trial_folder(ray_path, study.name, row.trial_id)
        params = folder / "params.json"
        if not params.is_file():
            notes.append(f"{row.run_name}: left out (no trial folder {folder})")
            continue
        config = json.loads(params.read_text())
        every, planned = int(config.get("eval_every", 1)), int(config.get("epochs", 0))
        chosen = checkpoints_of(folder, epochs, every, planned)
        if not chosen:
            notes.append(f"{row.run_name}: left out (no checkpoint kept in {folder})")
            continue
        jobs.append(ProbeJob(label=row.run_name.split()[0], checkpoints=chosen, config=config,
                             run_id=row.run_id))
    if not jobs:
        raise InputError(f"study {study.name!r}: no completed trial has a checkpoint under "
                         f"{Path(ray_path) / study.name}; "
                         + ("; ".join(notes) if notes else "it has no trials"))
    return jobs, notes


# ---- MLflow ---------------------------------------------------------------------------------
def check_probe_name(client: Any, parent_run_id: str, name: str,
                     settings: dict[str, Any]) -> bool:
    """False for a new probe name, True when it exists with the same settings (complete it).

    Raises:
        InputError: the name exists with other settings (it is never overwritten).
    """
    stored = client.get_run(parent_run_id).data.tags.get(TAG + name)
    if stored is None:
        return False
    if json.loads(stored) != json.loads(json.dumps(settings)):
        raise InputError(f"--name: probe {name!r} exists already in this study with other "
                         f"settings ({stored}); a probe is never overwritten (MLflow cannot "
                         "delete logged metrics): choose another --name")
    return True


def logged_steps(client: Any, run_id: str, name: str) -> set[int]:
    """Epochs a run holds for this probe already (read from MLflow, the record of truth)."""
    key = contract.probe_key(name, contract.CDNV_TARGET)
    return {int(m.step) for m in client.get_metric_history(run_id, key)}


def log_result(client: Any, run_id: str, name: str, result: ProbeResult) -> None:
    """The result's metrics as probe/<name>/<metric> at step = epoch, and the run's probe tag."""
    import math

    from mlflow.entities import Metric, RunTag

    from study.run.tracking import retry

    now = int(time.time() * 1000)
    marker = contract.probe_key(name, contract.CDNV_TARGET)
    for epoch, values in sorted(result.metrics.items()):
        # One epoch at a time, the key `logged_steps` reads last: an epoch it finds is whole.
        metrics = sorted((Metric(contract.probe_key(name, key), float(value), now, epoch)
                          for key, value in values.items() if math.isfinite(value)),
                         key=lambda m: m.key == marker)
        for i in range(0, len(metrics), 1000):
            retry(partial(client.log_batch, run_id, metrics=metrics[i:i + 1000]))
    tags = [RunTag(TAG + name, f"done: {result.adaptation}")]
    retry(lambda: client.log_batch(run_id, tags=tags))


def say(text: str = "") -> None:
    """Print and flush: the lines a user watches while Ray works."""
    print(text, flush=True)


def skip_logged(job: ProbeJob, steps: set[int]) -> ProbeJob:
    """The job without the epochs its run already holds."""
    from dataclasses import replace

    return replace(job, checkpoints=[(e, f) for e, f in job.checkpoints if e not in steps])


def header(study: str, name: str, target: ProbeTarget, jobs: list[ProbeJob], epochs: str,
           again: bool, notes: list[str]) -> str:
    """What is about to run, and how the images are adapted to each kind of backbone."""
    n_ckpt = sum(len(j.checkpoints) for j in jobs)
    lines = [f"Probe '{name}' of study '{study}': {len(jobs)} trials, {n_ckpt} checkpoints "
             f"({epochs} epoch{'s' if epochs == 'all' else ''})"
             + (" - completing an interrupted probe" if again else ""),
             f"  target: {describe_target(target)}"]
    lines += [f"  input: {text}" for text in adaptations(target, jobs)]
    lines += [f"  note: {n}" for n in notes]
    return "\n".join(lines)


def adaptations(target: ProbeTarget, jobs: list[ProbeJob]) -> list[str]:
    """`1 channel 16x16 -> as trained on (t001, t002)`: one line per kind of backbone input."""
    from trainables.probe import in_channels, read_checkpoint
    from trainables.probe_data import adapt_images

    kinds: dict[str, list[str]] = {}
    for job in jobs:
        _, path = job.checkpoints[-1]
        chans = (int(job.config["in_chans"]) if job.zoo
                 else in_channels(read_checkpoint(path)["model"]))
        _, text = adapt_images(target.split.images[:1], chans, int(job.config["image_size"]))
        kinds.setdefault(text, []).append(job.label)
    return [f"{text} ({', '.join(labels)})" for text, labels in kinds.items()]


def record_probe(client: Any, parent_run_id: str, name: str, settings: dict[str, Any],
                 target: ProbeTarget) -> None:
    """The probe's settings as a parent-run tag (compared on a rerun) and its manifest."""
    from study.run.tracking import retry

    retry(lambda: client.set_tag(parent_run_id, TAG + name, json.dumps(settings)))
    manifest = {**target.manifest, "episode_banks": target.bank_hashes()}
    retry(lambda: client.log_text(parent_run_id, json.dumps(manifest, indent=2, default=str),
                                  f"probes/{name}/manifest.json"))


def run_and_log(client: Any, name: str, target: ProbeTarget, jobs: list[ProbeJob]) -> list[str]:
    """Run the tasks; log each result into its run as it arrives; the labels that failed."""
    from study.probe.jobs import ProbeProgress, run_jobs
    from study.run.tracking import retry

    runs = {j.label: j.run_id for j in jobs}
    progress = ProbeProgress(len(jobs), PRIMARY, shown_as=contract.probe_key(name, PRIMARY))
    failed = []
    for label, error in run_jobs(jobs, target.split, target.banks, target.evaluation, progress,
                                 lambda r: log_result(client, runs[r.label], name, r)):
        failed.append(label)
        retry(partial(client.set_tag, runs[label], TAG + name, f"failed: {error}"))
    say(f"Probed {len(jobs) - len(failed)} of {len(jobs)}"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    return failed


def report(study: str, name: str, uri: str, experiment: str, folder: Path) -> None:
    """The probe's report: its verdict lines and where the file is."""
    from analysis.crosstrial.probe_report import analyze_probe

    rep = analyze_probe(study, name, uri, folder, experiment=experiment)
    say("")
    for line in rep.verdict:
        say(f"  {line}")
    say(f"Report: {rep.path}")


def execute(client: Any, state: StudyState, target: ProbeTarget, jobs: list[ProbeJob], *,
            epochs: str, notes: list[str], address: str | None, report_to: Path | None,
            unit: str = "trials") -> list[str]:
    """After every check: skip what MLflow holds already (the same probe run again), say what
    runs, run and log it, write the report; returns the labels of the jobs that failed."""
    from study.run.tuner import init_ray

    name = target.name
    settings = target.settings(epochs)
    again = check_probe_name(client, state.parent_run_id, name, settings)
    if again:  # complete an interrupted probe: never log a step twice
        jobs = [j for j in (skip_logged(j, logged_steps(client, j.run_id, name)) for j in jobs)
                if j.checkpoints]
    say(header(state.name, name, target, jobs, epochs, again, notes)
        .replace(" trials,", f" {unit},"))
    if not jobs:
        say(f"Every one holds probe '{name}' already: nothing to probe.")
        return []
    record_probe(client, state.parent_run_id, name, settings, target)
    init_ray(address)
    failed = run_and_log(client, name, target, jobs)
    if report_to is not None and len(failed) < len(jobs):
        report(state.name, name, state.tracking_uri, state.experiment, report_to)
    return failed
