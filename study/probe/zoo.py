"""`nctune probe --models zoo.yaml --target DATASET`: pretrained checkpoints nctune did not train.

A zoo file names timm architectures and local weights files (nothing is downloaded):

    name: my-zoo                      # the zoo's study name (default: the file's stem)
    evaluation: {episodes: 600}       # optional: the probe's episodes, as in a study config
    models:
      - {name: r18, arch: resnet18, weights: ~/ckpt/r18.safetensors}
      - {name: cnx, arch: convnext_tiny, weights: ~/.cache/huggingface/hub/models--timm--...,
         image_size: 224}             # default: the architecture's own input size

The zoo becomes a study of its own (a parent run, one child run per model, studies/NAME/
study.json), so `nctune show`, `nctune ui` and `nctune analyze NAME --probe P` work on it.
Probing the same zoo on another target reuses its runs (matched by model name).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from analysis import contract
from analysis.crosstrial import store
from analysis.errors import InputError
from trainables.config import EvaluationConfig
from trainables.probe import ProbeJob

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"


class ZooModel(BaseModel):
    """One pretrained model: a timm architecture and its weights on this machine."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    arch: str
    weights: str
    image_size: int | None = Field(None, ge=8, le=1024)


class Zoo(BaseModel):
    """A zoo file: its study name, the probe's evaluation settings, the models."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=NAME)
    description: str = ""
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    models: list[ZooModel] = Field(min_length=1)


def read_zoo(path: Path) -> Zoo:
    """The validated zoo file (pydantic names any bad field; the CLI prints it, exit 2)."""
    import yaml

    if not path.is_file():
        raise InputError(f"--models: no zoo file {str(path)!r}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"--models: {path} is not YAML: {str(exc).splitlines()[0]}") from None
    zoo = Zoo.model_validate(data if isinstance(data, dict) else {"models": data})
    names = [m.name for m in zoo.models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"models: the names {twice} appear twice; every model needs its own")
    return zoo.model_copy(update={"name": zoo.name or path.stem})


def check_models(zoo: Zoo, base: Path) -> list[dict[str, Any]]:
    """Every weights file loads (weights_only) and fits its architecture, before anything is
    logged; returns each model's facts (resolved path, input size, channels, parameters)."""
    from trainables.probe import read_weights, weights_file, zoo_backbone

    facts = []
    for m in zoo.models:
        path = Path(m.weights).expanduser()
        path = path if path.is_absolute() else (base / path)
        try:
            state = read_weights(path)
            model = zoo_backbone(m.arch, state, str(path))
        except InputError as exc:
            raise InputError(f"models[{m.name}]: {exc}") from None
        size = m.image_size or int(model.model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        facts.append({"name": m.name, "arch": m.arch, "weights": str(weights_file(path)),
                      "image_size": size, "in_chans": int(model.model.in_chans),
                      "params": sum(p.numel() for p in model.parameters())})
    return facts


def open_zoo_study(zoo: Zoo, facts: list[dict[str, Any]], root: Path, uri: str) -> tuple[
        Any, Any, dict[str, str]]:
    """(client, StudyState, model name -> run id): the zoo's study, created on first use."""
    from study.run.state import STATE_FILE, StudyState, open_store
    from study.run.tracking import dump_json, log_study_start

    folder = store.study_dir(root, str(zoo.name))
    client, exp_id = open_store(uri, "nctune", root / "artifacts"
                                if uri.startswith("sqlite:") else None)
    if (folder / STATE_FILE).exists():
        state = StudyState.load(folder)
        if not (folder / "zoo.yaml").exists():
            raise InputError(f"name: {zoo.name!r} is a study nctune trained, not a zoo; "
                             "give the zoo another name (name: in the file)")
    else:
        text = zoo.description or f"Pretrained models probed by nctune (zoo '{zoo.name}')"
        parent = log_study_start(client, exp_id, str(zoo.name), text,
                                 {store.TAG_KIND: "zoo", store.TAG_SEARCHED: "arch"},
                                 {"models": len(facts)}, {"zoo.json": dump_json(facts)})
        state = StudyState(name=str(zoo.name), status="completed", tracking_uri=uri,
                           experiment="nctune", experiment_id=exp_id, parent_run_id=parent,
                           ray_path="", created=dt.datetime.now().isoformat(timespec="seconds"),
                           num_samples=len(facts),
                           metric=contract.DEFAULT_SEARCH_METRIC, mode="max")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "zoo.yaml").write_text(json.dumps(zoo.model_dump(), indent=2))
        state.save(folder)
        store.retry(lambda: client.set_terminated(parent, "FINISHED"))
    return client, state, model_runs(client, state, facts)


def model_runs(client: Any, state: Any, facts: list[dict[str, Any]]) -> dict[str, str]:
    """Each model's child run, created the first time a model is probed."""
    from study.run.tracking import child_runs

    runs = {str(r.data.tags.get(store.TAG_TRIAL_ID)): str(r.info.run_id)
            for r in child_runs(client, state.experiment_id, state.parent_run_id)}
    for fact in facts:
        if fact["name"] in runs:
            continue
        index = len(runs) + 1
        tags = {"mlflow.parentRunId": state.parent_run_id, store.TAG_STUDY: state.name,
                store.TAG_ROLE: store.ROLE_TRIAL, store.TAG_TRIAL_ID: fact["name"],
                store.TAG_TRIAL_INDEX: str(index), store.TAG_STATUS: "completed"}
        run_id = store.retry(functools.partial(_model_run, client, state, index, tags, fact))
        runs[fact["name"]] = run_id
    return runs


def probe_zoo(args: argparse.Namespace) -> int:
    """Check the zoo, the target and the store; then probe each model as a Ray task."""
    from analysis.crosstrial.store import resolve_tracking_uri
    from study.probe.run import execute, prepare_target, say, target_config
    from study.run.preflight import check_tracking
    from study.run.tracking import tracking_defaults

    zoo = read_zoo(args.models)
    root = Path(args.root).expanduser().resolve()
    facts = check_models(zoo, args.models.resolve().parent)
    size = max(f["image_size"] for f in facts)
    dataset, all_classes = target_config(args.target, args.overrides, size)
    name = contract.check_name_part("--name", args.name or args.target)
    target = prepare_target(name, dataset, all_classes, zoo.evaluation)
    uri = resolve_tracking_uri(args.tracking_uri, root)
    tracking_defaults()
    check_tracking(uri)
    client, state, runs = open_zoo_study(zoo, facts, root, uri)
    jobs = [ProbeJob(f["name"], [(0, f["weights"])], {k: f[k] for k in ("arch", "image_size",
                     "in_chans")}, zoo=True, run_id=runs[f["name"]])
            for f in facts]
    folder = store.report_dir(root, state.name, name)
    failed = execute(client, state, target, jobs, epochs="final", notes=[],
                     address=args.address, report_to=None if args.no_report else folder,
                     unit="models")
    say(f"\nIn MLflow: study '{state.name}', one run per model, probe/{name}/<metric>.")
    return 1 if failed else 0


def _model_run(client: Any, state: Any, index: int, tags: dict[str, str],
               fact: dict[str, Any]) -> str:
    """One model's child run: created, its facts as params, finished; returns its id."""
    from mlflow.entities import Param

    run = client.create_run(state.experiment_id, run_name=f"m{index:03d} {fact['name']}",
                            tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in fact.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return str(run.info.run_id)
