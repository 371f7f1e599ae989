"""The trainable outside Ray: resume equals uninterrupted, divergence ends, metrics complete."""

from __future__ import annotations

import math

import pytest
import torch

from analysis import contract as names
from trainables.config import TrialConfig
from trainables.pretrain import Trainer


def tiny_config(**training) -> TrialConfig:
    return TrialConfig.model_validate({
        "dataset": {"name": "glyphs", "num_source_classes": 8, "num_target_classes": 8,
                    "source_train_per_class": 6, "source_test_per_class": 3,
                    "target_per_class": 8, "image_size": 16},
        "backbone": {"name": "test_resnet", "width": 1.0, "small_stem": True},
        "training": {"epochs": 2, "batch_size": 16, "lr": 0.05, **training},
        "evaluation": {"eval_every": 1, "episodes": 20, "queries": 3, "probe_episodes": 5,
                       "features_per_class": 4},
    })


class Recorder:
    def __init__(self) -> None:
        self.reports: list[dict] = []
        self.states: list[dict] = []

    def __call__(self, metrics, state) -> None:
        self.reports.append(metrics)
        if state is not None:
            self.states.append({k: v for k, v in state.items()})


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def test_every_contract_metric_at_every_evaluated_epoch():
    cfg = tiny_config()
    rec = Recorder()
    Trainer(cfg, threads=1, device=torch.device("cpu")).fit(rec)
    assert [r["epoch"] for r in rec.reports] == [1, 2]
    expected = cfg.metric_names()
    for report in rec.reports:
        assert expected <= set(report), expected - set(report)
        assert all(math.isfinite(report[k]) for k in expected)
        # every logged key is described once (analysis.descriptors): direction, label, citation
        logged = {k for k in report if names.is_trial_metric(k)}
        assert logged == expected
        assert not [k for k in logged if names.descriptor(k) is None]
    assert rec.reports[-1]["trial_status"] == "completed"


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path, deterministic):
    from trainables.checkpoint import save_checkpoint

    cfg = tiny_config(mixup_alpha=0.0)
    full = Recorder()
    Trainer(cfg, threads=1, device=torch.device("cpu")).fit(full)

    first = Trainer(cfg, threads=1, device=torch.device("cpu"))
    part = Recorder()

    def stop_after_one(metrics, state):
        part(metrics, state)
        save_checkpoint(state, tmp_path)
        raise KeyboardInterrupt  # the trial is killed right after its first report

    with pytest.raises(KeyboardInterrupt):
        first.fit(stop_after_one)
    resumed = Trainer(cfg, threads=1, device=torch.device("cpu"))
    resumed.restore(str(tmp_path))
    assert resumed.epoch == 1
    rest = Recorder()
    resumed.fit(rest)
    assert [r["epoch"] for r in rest.reports] == [2]
    for key, value in full.reports[1].items():
        if key.startswith(("time/", "throughput/")):
            continue
        if isinstance(value, str):
            assert rest.reports[0][key] == value
        else:
            assert rest.reports[0][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_divergence_ends_the_trial_with_one_report():
    rec = Recorder()
    Trainer(tiny_config(lr=1e3, epochs=3), threads=1, device=torch.device("cpu")).fit(rec)
    assert rec.reports[-1]["trial_status"] == "diverged"
    assert rec.reports[-1]["epoch"] <= 3
    assert not any("cdnv/target" in r for r in rec.reports[-1:])
