"""The probe's worker side: image adaptation, weights files, zoo and trial backbones, one job."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from analysis import contract
from analysis.errors import InputError
from trainables.augment import normalize
from trainables.backbones import create_backbone
from trainables.checkpoint import save_checkpoint
from trainables.config import DatasetConfig, EvaluationConfig, TrialConfig
from trainables.data import Split
from trainables.evaluate import build_banks, evaluate_target, extract
from trainables.probe import (
    ProbeJob,
    read_checkpoint,
    read_weights,
    run_job,
    weights_file,
    zoo_backbone,
)
from trainables.probe_data import adapt_images, load_target
from trainables.taps import backbone_taps

EV = EvaluationConfig(shapes=["3w1s", "3w2s"], episodes=8, queries=2, probe_episodes=3,
                      classifiers=["ncc", "ncc_raw"])


class Evil:
    """A pickle payload: loading it with weights_only=False would call print()."""

    def __reduce__(self):
        return (print, ("this ran on load",))


def timm_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=7)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def small_target(n_classes: int = 4, per_class: int = 6, channels: int = 1,
                 size: int = 16) -> Split:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_classes * per_class, channels, size, size),
                           generator=gen, dtype=torch.uint8)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return Split(images, labels, [str(c) for c in range(n_classes)])


def test_grayscale_to_rgb_repeats_and_rgb_to_grayscale_is_bt601_luma():
    gray = torch.tensor([[[[0, 128], [255, 7]]]], dtype=torch.uint8)
    rgb, said = adapt_images(gray, 3, 2)
    assert rgb.shape == (1, 3, 2, 2) and said == "grayscale -> RGB (channel repeated)"
    assert torch.equal(rgb[:, 0], gray[:, 0]) and torch.equal(rgb[:, 2], gray[:, 0])
    red = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    red[:, 0] = 255
    luma, said = adapt_images(red, 1, 2)
    assert said == "RGB -> grayscale (BT.601 luma)"
    assert luma.shape == (1, 1, 2, 2) and int(luma.unique()) == round(0.299 * 255)


def test_resize_keeps_a_flat_image_flat_and_says_so():
    flat = torch.full((2, 1, 8, 8), 77, dtype=torch.uint8)
    out, said = adapt_images(flat, 1, 20)
    assert out.shape == (2, 1, 20, 20) and int(out.unique()) == 77
    assert said == "8x8 -> 20x20 (bilinear)"
    same, said = adapt_images(flat, 1, 8)
    assert said == "as trained on" and torch.equal(same, flat)
    with pytest.raises(InputError, match="only between 1 and 3"):
        adapt_images(torch.zeros(1, 2, 8, 8, dtype=torch.uint8), 3, 8)


def test_zoo_features_equal_timm_on_its_own_normalisation(tmp_path):
    state = timm_state("test_resnet")
    save_file(state, str(tmp_path / "r.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "r.pth")  # a training script's wrapper
    for file in ("r.safetensors", "r.pth"):
        zoo = zoo_backbone("test_resnet", read_weights(tmp_path / file), file).eval()
        ref = timm.create_model("test_resnet", pretrained=False, num_classes=7).eval()
        ref.load_state_dict(state)
        images = small_target(channels=3, size=32).images
        mean = torch.tensor(ref.pretrained_cfg["mean"])[None, :, None, None]
        std = torch.tensor(ref.pretrained_cfg["std"])[None, :, None, None]
        with torch.no_grad():
            want = ref.forward_head(ref.forward_features((images / 255 - mean) / std),
                                    pre_logits=True)
            got = zoo.features(normalize(images))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert zoo.classifier.out_features == 7


def test_weights_of_another_architecture_are_refused_with_the_file_named(tmp_path):
    save_file(timm_state("test_convnext"), str(tmp_path / "c.safetensors"))
    with pytest.raises(InputError, match=r"c\.safetensors' does not fit timm architecture "
                                         r"'test_resnet'"):
        zoo_backbone("test_resnet", read_weights(tmp_path / "c.safetensors"),
                     str(tmp_path / "c.safetensors"))
    with pytest.raises(InputError, match="not a timm architecture; did you mean"):
        zoo_backbone("test_resnett", {}, "x")


def test_tampered_files_never_run_code_and_are_refused(tmp_path, capsys):
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1, "evil": Evil()}, tmp_path / "t.pt")
    with pytest.raises(InputError, match="does not load as plain tensors"):
        read_checkpoint(tmp_path / "t.pt")
    (tmp_path / "w.pth").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(InputError, match="does not load as plain tensors"):
        read_weights(tmp_path / "w.pth")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(InputError, match="does not load as plain tensors"):
        read_weights(tmp_path / "cut.safetensors")
    assert "this ran on load" not in capsys.readouterr().out


def test_weights_file_is_found_in_a_hugging_face_cache_folder(tmp_path):
    snap = tmp_path / "models--timm--test_resnet" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file(timm_state("test_resnet"), str(snap / "model.safetensors"))
    (snap / "config.json").write_text("{}")
    assert weights_file(tmp_path / "models--timm--test_resnet") == snap / "model.safetensors"
    with pytest.raises(InputError, match="no file or folder"):
        weights_file(tmp_path / "missing")


def trial_job(folder, epochs=(1, 2)):
    """A tiny trained-from-scratch backbone saved as a trial's checkpoints, and its job."""
    cfg = TrialConfig.model_validate({
        "dataset": {"num_source_classes": 5, "image_size": 16},
        "backbone": {"name": "test_resnet"}, "evaluation": EV.model_dump()})
    torch.manual_seed(0)
    model = create_backbone("test_resnet", num_classes=5, in_chans=1).eval()
    for epoch in epochs:
        (folder / f"c{epoch}").mkdir()
        save_checkpoint({"model": model.state_dict(), "epoch": epoch}, folder / f"c{epoch}")
    job = ProbeJob("t001", [(e, str(folder / f"c{e}" / "trial.pt")) for e in epochs],
                   cfg.flat())
    return model, job


def test_a_trial_job_measures_what_the_trial_measures_on_its_target(tmp_path):
    model, job = trial_job(tmp_path)
    target = small_target()
    banks = build_banks(target, EV)
    result = run_job(job, target, banks, EV, torch.device("cpu"))
    feats = extract(model, target, torch.device("cpu"))
    want = evaluate_target(feats, banks, EV, center=feats.features.mean(0))
    assert sorted(result.metrics) == [1, 2] and result.adaptation == "as trained on"
    taps = backbone_taps("test_resnet")
    layers = ({contract.layer_key(t, f, "target") for t in taps for f in contract.LAYER_FAMILIES}
              | {contract.layer_fewshot_key(t, s) for t in taps for s in EV.shapes})
    for epoch in (1, 2):
        got = result.metrics[epoch]
        assert got.keys() == want.keys() | layers
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-5), key
        # The last stage, pooled, is the penultimate layer: same features, same episodes.
        for shape in EV.shapes:
            assert got[contract.layer_fewshot_key(taps[-1], shape)] == pytest.approx(
                got[contract.fewshot_key(shape, "ncc")])


def test_a_probe_target_takes_every_class_unless_told():
    split, manifest = load_target(DatasetConfig(name="digits", image_size=8,
                                                target_per_class=5), all_classes=True)
    assert split.num_classes == 10 and len(split) == 50
    assert torch.equal(split.labels, torch.arange(10).repeat_interleave(5))
    assert manifest["classes"] == 10 and len(manifest["content_hash"]) == 12
    few, _ = load_target(DatasetConfig(name="digits", image_size=8, num_target_classes=4,
                                       target_per_class=5), all_classes=False)
    assert few.num_classes == 4 and set(few.class_names) <= set(split.class_names)
    with pytest.raises(InputError, match=r"dataset\.num_target_classes: 12 requested"):
        load_target(DatasetConfig(name="digits", image_size=8, num_target_classes=12),
                    all_classes=False)


@pytest.mark.gpu
def test_a_job_on_the_gpu_measures_what_it_measures_on_the_cpu(tmp_path):
    _, job = trial_job(tmp_path, epochs=(1,))
    target = small_target()
    banks = build_banks(target, EV)
    cpu = run_job(job, target, banks, EV, torch.device("cpu")).metrics[1]
    gpu = run_job(job, target, banks, EV, torch.device("cuda")).metrics[1]
    assert gpu.keys() == cpu.keys()
    for key in (contract.fewshot_key("3w2s", "ncc"), contract.collapse_key("cdnv", "target")):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-3, abs=1e-3), key
