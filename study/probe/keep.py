"""Keep every evaluated epoch's weights for `nctune probe --epochs all` (training.keep_checkpoints).

Tune keeps the newest two checkpoints of each trial (study.run.tuner.KEEP_CHECKPOINTS), so the final
one is always there for a probe. A study that asks for every evaluated epoch
(`training.keep_checkpoints: evaluated`) gets this driver-side Tune callback instead of a larger
`num_to_keep`: on every checkpoint of an evaluated epoch it writes the model weights alone
(`{"model", "epoch"}`, half a checkpoint: no optimiser momentum) to
`<trial folder>/evaluated/epoch_NNNNNN.pt`. Tune's own retention, and with it resume, is left
exactly as it is; a resumed trial that reports an epoch again overwrites the same file.
Non-evaluated epochs (with `eval_every` > 1) are not kept: nothing measured them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback

FOLDER = "evaluated"
log = logging.getLogger(__name__)


def evaluated_epoch(epoch: int, config: dict[str, Any]) -> bool:
    """The trainable's rule: every `eval_every` epochs, and always the last."""
    every, last = int(config.get("eval_every", 1)), int(config.get("epochs", 0))
    return epoch == last or (every > 0 and epoch % every == 0)


def weights_path(trial_folder: Path, epoch: int) -> Path:
    """Where the weights of one evaluated epoch of a trial are kept."""
    return trial_folder / FOLDER / f"epoch_{epoch:06d}.pt"


class KeepEvaluatedWeights(Callback):
    """Copies the weights of each evaluated epoch's checkpoint next to the trial's folder."""

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        """Tune calls this on the driver once the checkpoint is in the study's storage."""
        folder = Path(str(checkpoint.path))
        if "://" in str(checkpoint.path) or not (folder / "trial.pt").is_file():
            return  # remote storage: a probe reads local or mounted folders only
        try:
            self.keep(folder, dict(trial.config))
        except Exception as exc:  # a full disk must not stop the study: the probe says so
            log.warning("could not keep the weights of %s: %s", folder, exc)

    @staticmethod
    def keep(checkpoint_folder: Path, config: dict[str, Any]) -> Path | None:
        """Write the weights of one checkpoint folder if its epoch was evaluated."""
        import torch

        state = torch.load(checkpoint_folder / "trial.pt", map_location="cpu",
                           weights_only=True, mmap=True)
        epoch = int(state["epoch"])
        if not evaluated_epoch(epoch, config):
            return None
        path = weights_path(checkpoint_folder.parent, epoch)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": state["model"], "epoch": epoch}, tmp)
        tmp.replace(path)  # atomic: a probe never reads half a file
        return path
