"""Which checkpoints a probe finds: the evaluated epochs' weights kept beside Tune's own."""

from __future__ import annotations

import pytest
import torch

from analysis.errors import InputError
from study.probe.keep import KeepEvaluatedWeights, evaluated_epoch, weights_path
from study.probe.run import checkpoints_of
from trainables.checkpoint import save_checkpoint


def tune_checkpoint(trial, index: int, epoch: int):
    folder = trial / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    state = {"model": {"w": torch.full((2,), float(epoch))}, "epoch": epoch,
             "optimizer": {"momentum": torch.zeros(2)}}
    save_checkpoint(state, folder)
    return folder


def test_evaluated_epochs_follow_the_trainables_rule():
    config = {"eval_every": 2, "epochs": 5}
    assert [e for e in range(1, 6) if evaluated_epoch(e, config)] == [2, 4, 5]
    assert all(evaluated_epoch(e, {"eval_every": 1, "epochs": 3}) for e in (1, 2, 3))


def test_weights_of_evaluated_epochs_are_kept_and_found_by_the_probe(tmp_path):
    trial = tmp_path / "t0001"
    config = {"eval_every": 2, "epochs": 5}
    kept = [KeepEvaluatedWeights.keep(tune_checkpoint(trial, e - 1, e), config)
            for e in range(1, 6)]
    assert kept[0] is None and kept[2] is None  # epochs 1 and 3 were not evaluated
    assert kept[1] == weights_path(trial, 2) and kept[4] == weights_path(trial, 5)
    saved = torch.load(weights_path(trial, 4), weights_only=True)
    assert set(saved) == {"model", "epoch"} and saved["epoch"] == 4  # no optimiser state
    assert torch.equal(saved["model"]["w"], torch.full((2,), 4.0))
    # Tune then deletes all but its newest two checkpoints: the probe still finds every
    # evaluated epoch, and the final one.
    for e in (1, 2, 3):
        for f in (trial / f"checkpoint_{e - 1:06d}").iterdir():
            f.unlink()
    assert [e for e, _ in checkpoints_of(trial, "all", 2, 5)] == [2, 4, 5]
    assert [e for e, _ in checkpoints_of(trial, "final", 2, 5)] == [5]


def test_a_tampered_kept_file_is_refused(tmp_path):
    trial = tmp_path / "t0001"
    tune_checkpoint(trial, 0, 1)
    weights_path(trial, 1).parent.mkdir()
    weights_path(trial, 1).write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="does not load as plain tensors"):
        checkpoints_of(trial, "all", 1, 1)
