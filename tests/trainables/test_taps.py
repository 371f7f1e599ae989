"""Taps: the pooled stage outputs of one forward pass, their names, and their metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from analysis import contract as names
from analysis.errors import InputError
from analysis.measure.fewshot import sample_episodes
from tests.analysis.measure.collapse_refs import cdnv_pairs, nc_refs
from tests.analysis.measure.test_fewshot_ncc import _reference_accuracies
from tests.analysis.measure.test_rank import _reference as erank_reference
from tests.trainables.test_pretrain import tiny_config
from trainables.backbones import Backbone, create_backbone
from trainables.config import TrialConfig
from trainables.data import Split
from trainables.evaluate import evaluate, extract
from trainables.pretrain import Trainer
from trainables.taps import TapRecorder, backbone_taps, layer_metrics, select_taps

RESNET_TAPS = ("act1", "layer1", "layer2", "layer3", "layer4")


def _model(small_stem: bool = False) -> Backbone:
    torch.manual_seed(0)
    model = create_backbone("test_resnet", num_classes=6, in_chans=1, small_stem=small_stem)
    return model.eval()


def _manual_stages(model: Backbone, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stage outputs of timm's ResNet, by calling its modules one after another."""
    m = model.model
    out = {}
    h = m.act1(m.bn1(m.conv1(x)))
    out["act1"] = h
    h = m.maxpool(h)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        h = getattr(m, stage)(h)
        out[stage] = h
    return {k: v.mean(dim=(2, 3)) for k, v in out.items()}


@pytest.mark.parametrize("small_stem", [True, False])
def test_recorded_taps_equal_a_manual_forward(small_stem: bool) -> None:
    model = _model(small_stem)
    x = torch.randn(10, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), TapRecorder(model, RESNET_TAPS) as rec:
        feats = model.features(x[:6])
        feats = torch.cat([feats, model.features(x[6:])])
    got = rec.result()
    with torch.no_grad():
        want = _manual_stages(model, x)
    assert list(got) == list(RESNET_TAPS)
    for tap in RESNET_TAPS:
        torch.testing.assert_close(got[tap], want[tap], rtol=1e-5, atol=1e-6)
    # ResNets pool their last stage into the penultimate features: the last tap is that layer
    torch.testing.assert_close(got["layer4"], feats, rtol=1e-5, atol=1e-6)
    assert not model.model.layer2._forward_hooks  # hooks are removed on exit


def test_extract_yields_every_tap_in_the_same_single_pass() -> None:
    model = _model()
    g = torch.Generator().manual_seed(2)
    split = Split(torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=g),
                  torch.arange(4).repeat(10), ["a", "b", "c", "d"])
    calls = []
    handle = model.model.conv1.register_forward_pre_hook(lambda *_: calls.append(1))
    plain = extract(model, split, torch.device("cpu"), batch_size=16)
    tapped = extract(model, split, torch.device("cpu"), batch_size=16, taps=("layer1", "layer3"))
    handle.remove()
    assert len(calls) == 2 * 3  # 3 batches each: the taps cost no extra pass
    assert plain.taps == {} and list(tapped.taps) == ["layer1", "layer3"]
    torch.testing.assert_close(tapped.features, plain.features)
    assert tapped.taps["layer3"].shape == (40, 32) and tapped.taps["layer3"].dtype == torch.float32


def test_backbone_taps_come_from_timm_feature_info() -> None:
    assert backbone_taps("resnet18") == RESNET_TAPS
    assert backbone_taps("resnet12") == ("blocks.0", "blocks.1", "blocks.2", "blocks.3")
    assert backbone_taps("wrn28") == ("conv1", "groups.0", "groups.1", "groups.2")


def test_select_taps() -> None:
    assert select_taps("stages", RESNET_TAPS) == RESNET_TAPS
    assert select_taps("none", RESNET_TAPS) == ()
    assert select_taps(["layer3", "act1"], RESNET_TAPS) == ("act1", "layer3")  # depth order
    with pytest.raises(InputError, match=r"evaluation.layers: \['layer9'\] is not a tap of "
                       r"backbone 'resnet18'; its taps are act1, layer1, layer2, layer3, layer4"):
        select_taps(["layer2", "layer9"], RESNET_TAPS, "resnet18")


def test_config_lists_the_layer_metric_names_and_checks_the_tap_names() -> None:
    cfg = TrialConfig.model_validate({"backbone": {"name": "resnet18"}})
    layer_names = {n for n in cfg.metric_names() if n.startswith("layer/")}
    assert names.layer_key("layer2", "erank", "target") in layer_names
    assert names.layer_fewshot_key("act1", "5w1s") in layer_names
    assert not any("source_test" in n for n in layer_names)
    assert len(layer_names) == 5 * (4 * 2 + 2)  # 5 taps x (4 statistics x 2 splits + 2 shapes)
    both = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(
        update={"layers": ["layer4"], "layers_source_test": True})})
    assert names.layer_key("layer4", "nc1", "source_test") in both.metric_names()
    off = TrialConfig.model_validate({"evaluation": {"layers": "none"}})
    assert not any(n.startswith("layer/") for n in off.metric_names())
    with pytest.raises(ValidationError, match="is not a tap of backbone 'resnet18'"):
        TrialConfig.model_validate({"evaluation": {"layers": ["layer5"]}})
    with pytest.raises(ValidationError, match=r"use 'stages' \(every stage of the backbone"):
        TrialConfig.model_validate({"evaluation": {"layers": "all"}})


def test_layer_metrics_equal_the_slow_references() -> None:
    g = torch.Generator().manual_seed(5)
    means = torch.randn(6, 12, generator=g)
    y = torch.arange(6).repeat_interleave(8)
    src = means[y] + 0.7 * torch.randn(48, 12, generator=g)
    tgt = 2 * means[y] + torch.randn(48, 12, generator=g)
    bank = sample_episodes(y, n_way=3, k_shot=2, q_query=3, episodes=30, seed=0)
    out = layer_metrics({names.SOURCE_TRAIN: ({"t": src}, y, 6),
                         names.TARGET: ({"t": tgt}, y, 6)}, {"3w2s": bank})
    for split, x in ((names.SOURCE_TRAIN, src), (names.TARGET, tgt)):
        x64, labels = x.double().numpy(), y.numpy()
        pairs = cdnv_pairs(x64, labels, 6)
        unbiased = cdnv_pairs(x64, labels, 6, unbiased=True)
        assert out[names.layer_key("t", "cdnv", split)] == pytest.approx(
            np.mean(list(pairs.values())), rel=1e-9)
        assert out[names.layer_key("t", "cdnv_unbiased", split)] == pytest.approx(
            np.mean(list(unbiased.values())), rel=1e-9)
        assert out[names.layer_key("t", "nc1", split)] == pytest.approx(
            nc_refs(x64, labels, 6)["nc1"], rel=1e-7)
        assert out[names.layer_key("t", "erank", split)] == pytest.approx(
            erank_reference(x64), rel=1e-6)
    accs = _reference_accuracies(tgt.numpy(), bank.support.numpy(), bank.query.numpy(), "ncc",
                                 src.mean(0).numpy())
    assert out[names.layer_fewshot_key("t", "3w2s")] == pytest.approx(accs.mean(), abs=1e-6)
    assert len(out) == 4 * 2 + 1


def test_evaluate_reports_exactly_the_contracted_layer_names() -> None:
    cfg = tiny_config()
    trainer = Trainer(cfg, threads=1, device=torch.device("cpu"))
    out = evaluate(trainer.model, trainer.data, trainer.banks, cfg.evaluation, trainer.device)
    assert {n for n in out if n.startswith("layer/")} == {
        n for n in cfg.metric_names() if n.startswith("layer/")}
    # the last stage pooled is the penultimate layer: the same statistics, exactly
    assert out[names.layer_key("layer4", "cdnv", "target")] == pytest.approx(
        out[names.collapse_key("cdnv", "target")], rel=1e-9)
    assert out[names.layer_fewshot_key("layer4", "5w5s")] == out[
        names.fewshot_key("5w5s", "ncc")]
