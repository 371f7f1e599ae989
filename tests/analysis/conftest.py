"""Synthetic studies written through the real MLflow client, with planted relationships.

`write_study` lays out runs the way `study.run.tracking` does (contract: parent run per study,
nested child run per trial, flat params, metrics with step=epoch). `synth_trial` turns a
trial's planted final values into full per-epoch histories of every contract metric: CDNV
falls and few-shot accuracy rises over epochs, so the within-trial trend is planted too.

Creating an MLflow sqlite schema takes ~1.5 s, so one empty store is made per session and
copied; every study is still written and read by the real client.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SHAPES = ("5w1s", "5w5s")
PER_CLASS = {"source_train": 15, "source_test": 5, "target": 20}


@dataclass
class FakeTrial:
    """One trial to write: params, metric histories {key: {epoch: value}}, status."""

    params: dict[str, Any]
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)
    status: str = "completed"
    error: str = ""


def planted_bound(cdnv: float, n_way: int, k_shot: int) -> float:
    """A stand-in for the paper's bound, monotone in CDNV (tests only compare against it)."""
    return 4.0 * (n_way - 1) * cdnv * (1.0 + 1.0 / k_shot)


def synth_trial(params: dict[str, Any], *, cdnv_final: float, acc_final: float,
                src_acc_final: float = 0.8, epochs: int = 6, eval_every: int = 1,
                rng: np.random.Generator | None = None, status: str = "completed") -> FakeTrial:
    """Full histories from planted final values (5w5s NCC accuracy = `acc_final`)."""
    rng = rng or np.random.default_rng(0)
    metrics: dict[str, dict[int, float]] = {}

    def put(key: str, epoch: int, value: float) -> None:
        metrics.setdefault(key, {})[epoch] = float(value)

    for e in range(1, epochs + 1):
        left = 1.0 - e / epochs  # 0 at the last epoch: the planted final values hold there
        put("source/train_loss", e, 0.1 + 2.0 * left)
        put("source/train_acc", e, 0.99 - 0.5 * left)
        put("time/train_s", e, 1.0)
        if e % eval_every and e != epochs:
            continue
        put("source/test_acc", e, src_acc_final - 0.3 * left)
        # exact at the last epoch; the source splits carry their own noise (x ~1.00 +- 0.05)
        target = cdnv_final * 6.0 ** left * float(np.exp(rng.normal(0, 0.02) if left else 0.0))
        for split, factor in (("source_train", 0.4), ("source_test", 0.55), ("target", 1.0)):
            n = PER_CLASS[split]
            value = factor * target * (1.0 if split == "target" else
                                       float(np.exp(rng.normal(0, 0.05))))
            put(f"cdnv/{split}", e, value)
            put(f"cdnv_unbiased/{split}", e, value * n / (n - 1))
            put(f"nc1/{split}", e, 3.0 * value)
        acc = acc_final - 0.3 * left
        for shape in SHAPES:
            n_way, k_shot = int(shape[0]), int(shape[2])
            a = acc - (0.15 if k_shot == 1 else 0.0)
            put(f"fewshot/{shape}/ncc/acc", e, a)
            put(f"fewshot/{shape}/ncc/ci95", e, 0.01)
            put(f"fewshot/{shape}/ncc_raw/acc", e, a - 0.02)
            put(f"fewshot/{shape}/ncc_raw/ci95", e, 0.01)
            put(f"bound/{shape}", e, planted_bound(target, n_way, k_shot))
    full = {"epochs": epochs, "eval_every": eval_every, "seed": 0, "dataset": "glyphs",
            "shapes": ["5w1s", "5w5s"], "amp": False, **params}
    return FakeTrial(params=full, metrics=metrics, status=status)


def write_study(uri: str, name: str, trials: list[FakeTrial], *, searched: list[str],
                sampler: str = "tpe", experiment: str = "nctune",
                artifact_root: Path | None = None,
                space: dict[str, dict[str, Any]] | None = None) -> str:
    """Write one study through MlflowClient (batched); returns the parent run id. `space`, if
    given, is logged as the parent's space.json, as the driver does."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        root = artifact_root or Path(uri.split(":///", 1)[1]).parent / "artifacts"
        exp_id = client.create_experiment(experiment, artifact_location=root.as_uri())
    else:
        exp_id = exp.experiment_id
    parent = client.create_run(exp_id, run_name=name, tags={
        "nctune.study": name, "nctune.role": "study", "nctune.searched": ",".join(searched),
        "nctune.sampler": sampler, "nctune.metric": "fewshot/5w5s/ncc/acc",
        "nctune.mode": "max", "nctune.status": "completed",
    }).info.run_id
    if space is not None:
        client.log_text(parent, json.dumps(space), "space.json")
    now = int(time.time() * 1000)
    for i, t in enumerate(trials):
        tags = {"mlflow.parentRunId": parent, "nctune.study": name, "nctune.role": "trial",
                "nctune.trial_id": f"trial_{i:05d}", "nctune.trial_index": str(i),
                "nctune.status": t.status}
        if t.error:
            tags["nctune.error"] = t.error
        short = " ".join(f"{k}={v}" for k, v in t.params.items() if k in searched)
        run = client.create_run(exp_id, run_name=f"t{i:03d} {short}", tags=tags,
                                start_time=now + i).info.run_id
        metrics = [Metric(k, v, now + e, e) for k, hist in t.metrics.items()
                   for e, v in hist.items()]
        params = [Param(k, str(v)) for k, v in t.params.items()]
        for start in range(0, max(len(metrics), 1), 1000):
            client.log_batch(run, metrics=metrics[start:start + 1000],
                             params=params if start == 0 else [])
        client.set_terminated(run, status="FAILED" if t.status == "failed" else "FINISHED")
    client.set_terminated(parent)
    return parent


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite file with the schema created once (by this one process)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


StoreFactory = Callable[..., str]


@pytest.fixture
def new_store(empty_store: Path, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Make a fresh store under this test's tmp_path; returns its tracking URI."""

    def make(sub: str = "store") -> str:
        folder = tmp_path / sub
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(empty_store, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    yield make


def loguniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def planted_study(kind: str, n: int = 24, seed: int = 0, epochs: int = 5) -> list[FakeTrial]:
    """Trials with a planted relation between target CDNV and 5w5s NCC accuracy.

    kind:
        "monotone": weight decay drives CDNV down; accuracy falls with log CDNV (+ noise);
            source accuracy is independent noise. dropout is irrelevant.
        "noise": CDNV, accuracy and source accuracy independent.
        "confound": source accuracy drives both (lower CDNV and higher accuracy); nothing else.
    """
    rng = np.random.default_rng(seed)
    wd = loguniform(rng, 1e-5, 1e-2, n)
    dropout = rng.uniform(0.0, 0.5, n)
    src = rng.uniform(0.5, 0.95, n)
    if kind == "monotone":
        cdnv = 0.05 * (1e-2 / wd) ** 0.35 * np.exp(rng.normal(0, 0.15, n))
        acc = 0.95 - 0.12 * np.log10(cdnv / 0.05) + rng.normal(0, 0.02, n)
        src = rng.uniform(0.6, 0.9, n)
    elif kind == "noise":
        cdnv = 0.05 * np.exp(rng.normal(0, 0.5, n))
        acc = rng.uniform(0.5, 0.9, n)
    elif kind == "confound":
        cdnv = 0.5 * np.exp(-4.0 * src) * np.exp(rng.normal(0, 0.2, n))
        acc = 0.2 + 0.7 * src + rng.normal(0, 0.03, n)
    else:
        raise ValueError(kind)
    return [synth_trial({"weight_decay": float(wd[i]), "dropout": float(dropout[i])},
                        cdnv_final=float(cdnv[i]), acc_final=float(np.clip(acc[i], 0.25, 0.99)),
                        src_acc_final=float(src[i]), epochs=epochs, rng=rng)
            for i in range(n)]
