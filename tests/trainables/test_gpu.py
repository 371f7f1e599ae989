"""The GPU path of the trainable, and benchmarks/gpu_throughput.py.

Tests marked `gpu` run where CUDA exists (tests/conftest.py skips them elsewhere): one epoch on the
GPU with bf16 autocast and channels_last, no host-to-device copy per batch, the memory cap of a
fractional share, torch.compile, and two trials sharing one GPU through Ray. The others run
anywhere: which device a trial picks, and that the benchmark runs (and says when there is no GPU).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from analysis.errors import InputError
from tests.trainables.test_pretrain import Recorder, tiny_config
from trainables.pretrain import Trainer, limit_gpu_memory, pick_device

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = ROOT / "benchmarks" / "gpu_throughput.py"
CUDA = torch.device("cuda")


def test_auto_takes_the_gpu_only_for_a_trial_holding_a_share():
    gpu = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("cpu", gpus=1.0).type == "cpu"
    # Ray 2.60 leaves the GPUs visible to a trial that asked for none: it must not take one.
    assert pick_device("auto", gpus=0.0).type == "cpu"
    assert pick_device("auto", gpus=0.25).type == gpu
    assert pick_device("auto").type == gpu  # outside Ray


def test_cuda_without_a_gpu_is_one_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(InputError, match=r"training\.device: 'cuda'.*gpus_per_trial"):
        pick_device("cuda")


def run_benchmark(*args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, str(BENCHMARK), *args], capture_output=True, text=True,
                         timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_benchmark_without_a_gpu_says_so():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU from the process
    result = run_benchmark(env=env)
    assert result["gpu"] is None and result["note"].startswith("no GPU found")
    assert result["benchmark"] == "gpu_throughput"


@pytest.mark.slow
def test_benchmark_measures_on_the_cpu_at_toy_sizes():
    result = run_benchmark("--device", "cpu", "--quick", "--widths", "0.125,0.25",
                           "--loop-width", "0.125")
    assert result["device"] == "cpu" and result["settings"]["quick"]
    assert len(result["trainable_epoch_s"]) == len(result["bare_epoch_s"]) == 2
    assert result["ratio"] > 0 and result["epoch_images"] == 32
    widths = result["resnet18_small_stem_32px"]
    assert set(widths) == {"w0.125", "w0.25"}
    # Width 0.25 has 4x the weights of width 0.125 (every layer's in and out channels double).
    assert widths["w0.25"]["params_m"] > 3 * widths["w0.125"]["params_m"]
    assert all(w["train_img_s"] > 0 and w["infer_img_s"] > 0 for w in widths.values())


# ---- on the GPU ---------------------------------------------------------------------------------

def cuda_config(**training):
    return tiny_config(device="cuda", amp=True, channels_last=True, **training)


@pytest.mark.gpu
def test_one_epoch_on_the_gpu_with_bf16_and_channels_last():
    cfg = cuda_config(epochs=1, mixup_alpha=0.2)
    trainer = Trainer(cfg, threads=1, device=CUDA)
    for split in (trainer.data.source_train, trainer.data.source_test, trainer.data.target):
        assert split.images.is_cuda and split.labels.is_cuda
    convs = [m for m in trainer.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_cuda for m in convs)
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    rec = Recorder()
    trainer.fit(rec)
    (report,) = rec.reports
    assert report["trial_status"] == "completed"
    expected = cfg.metric_names()
    assert expected <= set(report), expected - set(report)
    assert all(math.isfinite(report[k]) for k in expected)


@pytest.mark.gpu
def test_no_host_to_device_copy_per_batch():
    from torch.profiler import ProfilerActivity, profile

    trainer = Trainer(cuda_config(epochs=3, batch_size=4, mixup_alpha=0.2), threads=1,
                      device=CUDA)
    assert trainer.steps_per_epoch >= 10
    trainer.epoch = 1
    trainer.train_epoch()  # warm-up: cuDNN autotuning, allocator
    trainer.epoch = 2
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.train_epoch()
        torch.cuda.synchronize()
    copies = [e.name for e in prof.events() if "htod" in e.name.lower()]
    # Data, indices, augmentation draws and mixup all live on the GPU: at most a handful of
    # copies per epoch, never one per batch.
    assert len(copies) < trainer.steps_per_epoch / 2, copies


@pytest.mark.gpu
def test_memory_cap_holds_a_process_to_its_share():
    index = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    before = torch.cuda.get_per_process_memory_fraction(index)
    try:
        for whole in (None, 0.0, 1.0, 2.0):  # outside Ray, no GPU, one or more GPUs: no cap
            limit_gpu_memory(CUDA, whole)
        assert torch.cuda.get_per_process_memory_fraction(index) == before
        limit_gpu_memory(CUDA, 0.25)  # torch.device("cuda"), no index: as pick_device returns
        assert torch.cuda.get_per_process_memory_fraction(index) == pytest.approx(0.25, rel=1e-3)
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(int(total * 0.3), dtype=torch.uint8, device=CUDA)
        torch.empty(int(total * 0.05), dtype=torch.uint8, device=CUDA)  # within the share
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        torch.cuda.empty_cache()


@pytest.mark.gpu
@pytest.mark.slow
def test_compiled_forward_trains_one_epoch():
    pytest.importorskip("triton")
    cfg = cuda_config(epochs=1, compile=True)
    trainer = Trainer(cfg, threads=1, device=CUDA)
    assert trainer.forward is not trainer.model
    rec = Recorder()
    trainer.fit(rec)
    assert rec.reports[-1]["trial_status"] == "completed"
    assert math.isfinite(rec.reports[-1]["source/train_loss"])
    # Checkpoints hold the plain module's weights (no torch.compile prefix).
    assert not any(k.startswith("_orig_mod") for k in trainer.state()["model"])


@pytest.mark.gpu
@pytest.mark.slow
def test_two_trials_share_one_gpu_at_half_a_gpu_each(tmp_path):
    import ray

    from study.run.driver import init_ray, run_study
    from tests.study.studies import tiny_study

    cfg = tiny_study(tmp_path, name="halfgpu", resources={"cpus_per_trial": 1,
                                                          "gpus_per_trial": 0.5},
                     search={"num_samples": 2, "max_concurrent": 2})
    init_ray(None)
    try:
        state = run_study(cfg, report=False)
    finally:
        ray.shutdown()
    assert state.status == "completed"
    results = [json.loads(line) for p in (tmp_path / "ray" / "halfgpu").glob("t*/result.json")
               for line in p.read_text().splitlines() if line]
    assert len({r["trial_id"] for r in results}) == 2
    assert {r["device"] for r in results} == {"cuda"}
