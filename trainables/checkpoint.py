"""Trial checkpoints: model, optimiser, scheduler, epoch and RNG states in one torch file.

Loaded with weights_only=True: a checkpoint is data, never code (a tampered file cannot run
anything on load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FILENAME = "trial.pt"


def rng_states() -> dict[str, Any]:
    """The torch (and CUDA) random states, saved with a checkpoint so a resumed trial draws what an
    uninterrupted one would."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(state: dict[str, Any], folder: str | Path) -> Path:
    """Write `state` plus the random states to `folder` (torch.save; loads stay weights_only)."""
    path = Path(folder) / FILENAME
    torch.save({**state, "rng": rng_states()}, path)
    return path


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Load and restore the RNG states; the caller restores the rest."""
    state = torch.load(Path(folder) / FILENAME, map_location="cpu", weights_only=True)
    rng = state.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state
