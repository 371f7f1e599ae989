"""Optimiser and learning-rate schedule for pretraining.

Weight decay applies to weights only: decaying BatchNorm scales and biases is a known way to hurt
training (it is what timm's `param_groups_weight_decay` and most few-shot codebases do too).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.config import TrainingConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: >=2-D weights decay, 1-D parameters (norm scales, biases) do not."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0) or AdamW over `param_groups`: weight decay on weights with
    >= 2 dims only, never on norms and biases."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up from 1/warmup to 1, then cosine to 0 at the last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per batch, so the schedule is smooth even with few epochs."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(cfg.warmup_epochs * steps_per_epoch, max(0, total - 1))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total)
    )
