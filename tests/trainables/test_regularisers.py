"""The regularisers a study varies reach the trial, checked numerically on a tiny model.

Weight decay, label smoothing, dropout and width are the factors whose effect on collapse the
studies measure; if one of them silently did not reach the network, every effect estimated for
it would be noise. Each test builds the trial's own `Trainer` from a config (the path a Ray
trial takes) and checks a number the factor must change, against the formula it should follow.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from tests.trainables.test_pretrain import tiny_config
from trainables.augment import normalize
from trainables.backbones import scale_channels
from trainables.config import TrialConfig
from trainables.pretrain import Trainer

CPU = torch.device("cpu")


def trainer(backbone: dict[str, Any] | None = None, **training: Any) -> Trainer:
    """A Trainer for tiny_config with backbone and training fields overridden."""
    spec = tiny_config(**training).model_dump()
    spec["backbone"].update(backbone or {})
    return Trainer(TrialConfig.model_validate(spec), threads=1, device=CPU)


def named_params(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


# --- weight decay -----------------------------------------------------------------------------


@pytest.mark.parametrize(("optimizer", "name"), [
    ("sgd", "test_resnet"), ("adamw", "test_resnet"), ("sgd", "resnet12"), ("sgd", "wrn28")])
def test_weight_decay_groups_hold_every_weight_and_no_norm_or_bias(optimizer: str,
                                                                   name: str) -> None:
    width = 1.0 if name == "test_resnet" else 0.125
    t = trainer({"name": name, "width": width}, optimizer=optimizer, weight_decay=0.01)
    names = named_params(t.model)
    groups = {g["weight_decay"]: [names[id(p)] for p in g["params"]]
              for g in t.optimizer.param_groups}
    assert set(groups) == {0.01, 0.0}
    decayed, free = set(groups[0.01]), set(groups[0.0])
    every = dict(t.model.named_parameters())
    assert decayed | free == set(every) and not decayed & free  # each parameter once
    assert decayed == {n for n, p in every.items() if p.ndim >= 2}
    # By module type, not by shape: convolutions and the classifier's weight decay; batch norm
    # scales and shifts and the classifier's bias do not.
    for module_name, module in t.model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}"
            if isinstance(module, nn.Conv2d | nn.Linear) and pname == "weight":
                assert full in decayed, full
            else:
                assert isinstance(module, nn.BatchNorm2d | nn.Linear), full
                assert full in free, full
    norms = {f"{mn}.{pn}" for mn, m in t.model.named_modules() if isinstance(m, nn.BatchNorm2d)
             for pn, _ in m.named_parameters(recurse=False)}
    assert norms and norms <= free and "model.fc.bias" in free


def zero_grad_step(t: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """One real optimizer step with every gradient zero: only weight decay moves a parameter."""
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    for p in t.model.parameters():
        p.grad = torch.zeros_like(p)
    lr = t.optimizer.param_groups[0]["lr"]  # after the scheduler's warm-up factor
    t.optimizer.step()
    after = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    return before, after, lr


@pytest.mark.parametrize(("optimizer", "momentum", "factor"), [
    ("sgd", 0.0, 1.0),  # p <- p - lr wd p
    ("sgd", 0.9, 1.9),  # Nesterov, first step: buf = wd p, p <- p - lr (wd p + m buf)
    ("adamw", 0.9, 1.0),  # decoupled: p <- p (1 - lr wd); Adam's own step is 0 for 0 gradient
])
def test_one_step_shrinks_weights_by_lr_times_decay_and_leaves_norms_alone(
        optimizer: str, momentum: float, factor: float) -> None:
    wd = 0.05
    t = trainer(optimizer=optimizer, momentum=momentum, weight_decay=wd, lr=0.2)
    before, after, lr = zero_grad_step(t)
    assert 0 < lr <= 0.2
    shrink = 1.0 - lr * wd * factor
    for name, old in before.items():
        if old.ndim >= 2:  # conv and classifier weights
            torch.testing.assert_close(after[name], old * shrink, rtol=1e-6, atol=1e-9)
            assert not torch.equal(after[name], old), name
        else:  # batch-norm scales and shifts, the classifier's bias
            assert torch.equal(after[name], old), name
    assert "model.conv1.weight" in before and "model.bn1.weight" in before


def test_zero_weight_decay_leaves_every_parameter_alone() -> None:
    before, after, _ = zero_grad_step(trainer(weight_decay=0.0, momentum=0.0))
    assert all(torch.equal(after[n], before[n]) for n in before)


# --- label smoothing --------------------------------------------------------------------------


def smoothed_loss_reference(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    """Mean over the batch of (1 - eps) (-log p_y) + eps mean_c(-log p_c), by loops, float64.

    Szegedy et al. 2016 (Inception-v3, Sec. 7): the target is (1 - eps) one-hot + eps / C.
    """
    total = 0.0
    for row, y in zip(logits.double().tolist(), labels.tolist(), strict=True):
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        nll = [log_z - v for v in row]
        total += (1 - eps) * nll[y] + eps * sum(nll) / len(row)
    return total / len(labels)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_the_training_step_loss_is_the_label_smoothing_formula(eps: float) -> None:
    """Trainer.train_step's returned loss (the one back-propagated and reported) against the
    formula on the logits of the same batch."""
    t = trainer(label_smoothing=eps, aug_strength=0.0)  # no augmentation: inputs are known
    split = t.data.source_train
    images, labels = split.images[:16], split.labels[:16]
    t.model.train()
    with torch.no_grad():  # train-mode BN uses the batch's statistics: the same logits below
        logits = t.forward(normalize(images))
    loss, _ = t.train_step(images, labels, t.epoch_generator())
    assert loss.item() == pytest.approx(smoothed_loss_reference(logits, labels, eps), rel=1e-5)
    if eps > 0:  # the smoothing is visible: not the plain cross-entropy
        plain = smoothed_loss_reference(logits, labels, 0.0)
        assert abs(loss.item() - plain) > 1e-3 * eps


# --- dropout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_resnet", "resnet12", "wrn28"])
def test_dropout_before_the_classifier_has_the_configured_rate(name: str) -> None:
    """In training, each penultimate feature is dropped with probability p and the rest scaled
    by 1 / (1 - p) (inverted dropout), and the classifier sees exactly those features."""
    p = 0.3
    width = 1.0 if name == "test_resnet" else 0.125
    t = trainer({"name": name, "width": width, "dropout": p})
    net = t.model.model
    x = normalize(t.data.source_train.images[:48])
    t.model.eval()
    with torch.no_grad():
        clean = t.model.features(x)
        net.training = True  # the head only: batch norm stays in eval mode
        torch.manual_seed(1)
        dropped = t.model.features(x)
        torch.manual_seed(1)
        logits = t.model(x)
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], clean[kept] / (1 - p), rtol=1e-5, atol=1e-6)
    live = clean != 0  # ReLU features that are 0 anyway tell nothing
    rate = float((~kept & live).sum() / live.sum())
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / int(live.sum())), rate
    torch.testing.assert_close(logits, t.model.classifier(dropped))


def test_no_dropout_when_the_config_says_zero() -> None:
    t = trainer({"dropout": 0.0})
    x = normalize(t.data.source_train.images[:16])
    t.model.eval()
    with torch.no_grad():
        clean = t.model.features(x)
        t.model.model.training = True
        assert torch.equal(t.model.features(x), clean)


# --- width ------------------------------------------------------------------------------------


def conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("small_stem", [True, False])
@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_width_scales_every_stage_and_the_stem(width: float, small_stem: bool) -> None:
    t = trainer({"width": width, "small_stem": small_stem})
    net = t.model.model
    stages = scale_channels((8, 16, 32, 64), width)  # test_resnet's published channels x width
    assert net.conv1.out_channels == stages[0]  # the stem, which timm's plain stem leaves at 64
    assert net.conv1.kernel_size == ((3, 3) if small_stem else (7, 7))
    for i, channels in enumerate(stages, start=1):
        stage = getattr(net, f"layer{i}")
        assert {c for c in conv_widths(stage)} == {channels}, (i, conv_widths(stage))
    assert t.model.feature_dim == stages[-1] == t.model.classifier.in_features
    x = normalize(t.data.source_train.images[:4])
    with torch.no_grad():
        assert t.model.features(x).shape == (4, stages[-1])
    base = trainer({"small_stem": small_stem}).model
    assert conv_widths(t.model) == [round(c * width / 2) * 2 for c in conv_widths(base)]


@pytest.mark.parametrize("width", [0.125, 0.25])
def test_width_reaches_the_few_shot_backbones(width: float) -> None:
    """ResNet-12 scales all four stages; WRN-28 scales its three groups by k = 10 x width and
    keeps the paper's 16-channel stem."""
    r12 = trainer({"name": "resnet12", "width": width}).model
    stages = scale_channels((64, 160, 320, 640), width)
    assert sorted(set(conv_widths(r12))) == sorted(stages)
    assert r12.feature_dim == stages[-1] == r12.classifier.in_features
    wrn = trainer({"name": "wrn28", "width": width}).model
    groups = scale_channels((16, 32, 64), 10 * width)
    assert conv_widths(wrn)[0] == 16 and set(conv_widths(wrn)) == {16, *groups}
    assert wrn.feature_dim == groups[-1] == wrn.classifier.in_features
