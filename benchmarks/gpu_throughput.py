"""GPU throughput: the trainable's epoch against a bare PyTorch loop, and ResNet-18 images/s.

Expected run time: about 1-2 minutes on one modern GPU (add a minute or two with --compile).

Claim 1 (ratio <= 1.05): an epoch of `trainables.pretrain.Trainer` on the GPU takes at most 5%
longer than a bare PyTorch loop doing the same work: the same backbone (`create_backbone`, same
arguments), the same uint8 images already on the GPU, the same pad-and-crop `BatchAugment` on the
GPU, the same optimiser and per-step schedule (`trainables.optim`), bf16 autocast around the
forward pass, channels_last inputs and model (and `torch.compile` for both with --compile). What
the trainable adds is its bookkeeping: loss and accuracy sums on the device and a divergence
check (one host sync) every 20 steps. Epochs alternate bare / trainable so that a change in load
lands on both; the first epoch of each (cuDNN autotuning, compilation) is left out; the ratio is
of medians.

Claim 2 (report): training and inference images/s of ResNet-18 with the small-image stem (3x3
stride 1, no max-pool) at widths 1, 2 and 4 on 32x32 RGB images, batch 256, bf16 autocast +
channels_last, with the peak memory each needs (what decides how many trials share a GPU,
`resources.gpus_per_trial`); width 1 also in float32 without channels_last, as the baseline of
`amp_speedup`.

The data are random uint8 images (64 classes x 200 = 12,800 at 32x32, CIFAR-FS-like): throughput
does not depend on what the pixels show. On a machine without CUDA it prints
{"gpu": null, "note": "no GPU found", ...} and exits 0; `--device cpu --quick` runs the same
code on the CPU at toy sizes (the test suite does, so the script keeps working). Prints one JSON
line, last.

    .venv/bin/python benchmarks/gpu_throughput.py [--compile] [--epochs 6] [--widths 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from trainables.augment import BatchAugment
from trainables.backbones import create_backbone
from trainables.config import TrialConfig
from trainables.data import DataSplits, Split
from trainables.optim import build_optimizer, build_scheduler
from trainables.pretrain import Trainer

IMAGE_SIZE = 32


def synthetic_splits(classes: int, per_class: int, device: torch.device) -> DataSplits:
    """Random uint8 RGB images, `per_class` per class; a small target split for the banks."""
    gen = torch.Generator().manual_seed(0)

    def split(c: int, n: int) -> Split:
        images = torch.randint(0, 256, (c * n, 3, IMAGE_SIZE, IMAGE_SIZE), generator=gen,
                               dtype=torch.uint8)
        labels = torch.arange(c).repeat_interleave(n)
        return Split(images, labels, [f"c{i}" for i in range(c)])

    return DataSplits(split(classes, per_class), split(classes, 2), split(10, 20),
                      {"dataset": "synthetic"}).to(device)


def trial_config(args: argparse.Namespace, device: torch.device, classes: int,
                 per_class: int) -> TrialConfig:
    return TrialConfig.model_validate({
        "dataset": {"num_source_classes": classes, "source_train_per_class": per_class,
                    "image_size": IMAGE_SIZE},
        "backbone": {"name": "resnet18", "width": args.loop_width, "small_stem": True},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05,
                     "aug_strength": 1.0, "device": device.type, "amp": not args.fp32,
                     "channels_last": True, "compile": args.compile},
        "evaluation": {"shapes": ["5w1s"], "episodes": 10, "queries": 5, "classifiers": ["ncc"]},
    })


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """The training work of an epoch with nothing else: no sums, no checks, no reports."""

    def __init__(self, cfg: TrialConfig, data: DataSplits, device: torch.device) -> None:
        tr = cfg.training
        self.cfg, self.device = cfg, device
        self.images, self.labels = data.source_train.images, data.source_train.labels
        torch.manual_seed(tr.seed)
        self.model = create_backbone(
            cfg.backbone.name, num_classes=data.source_train.num_classes, in_chans=3,
            width=cfg.backbone.width, small_stem=cfg.backbone.small_stem,
        ).to(device).to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if tr.compile else self.model
        self.batch = min(tr.batch_size, len(self.labels))
        self.steps = len(self.labels) // self.batch
        self.optimizer = build_optimizer(self.model, tr)
        self.scheduler = build_scheduler(self.optimizer, tr, self.steps)
        self.augment = BatchAugment(IMAGE_SIZE, mode="pad_crop", strength=tr.aug_strength)

    def epoch(self, index: int) -> None:
        gen = torch.Generator(device=self.device).manual_seed(index)
        order = torch.randperm(len(self.labels), generator=gen, device=self.device)
        self.model.train()
        for step in range(self.steps):
            idx = order[step * self.batch : (step + 1) * self.batch]
            x = self.augment(self.images[idx], gen).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.cfg.training.amp):
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), self.labels[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()


def timed(fn: Any, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def trainable_vs_bare(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    classes, per_class = (4, 8) if args.quick else (64, 200)
    data = synthetic_splits(classes, per_class, device)
    cfg = trial_config(args, device, classes, per_class)
    trainer = Trainer(cfg, threads=torch.get_num_threads(), device=device, data=data)
    bare = BareLoop(cfg, data, device)
    trainable_s, bare_s = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for epoch in range(1, cfg.training.epochs + 1):
        bare_s.append(timed(lambda e=epoch: bare.epoch(e), device))
        trainer.epoch = epoch
        trainable_s.append(timed(trainer.train_epoch, device))
    later_t, later_b = trainable_s[1:] or trainable_s, bare_s[1:] or bare_s
    images = bare.steps * bare.batch
    return {
        "epoch_images": images,
        "trainable_epoch_s": [round(t, 4) for t in trainable_s],
        "bare_epoch_s": [round(t, 4) for t in bare_s],
        "ratio": round(statistics.median(later_t) / statistics.median(later_b), 3),
        "ratio_fastest": round(min(later_t) / min(later_b), 3),
        "trainable_img_s": round(images / statistics.median(later_t)),
        "bare_img_s": round(images / statistics.median(later_b)),
        **({"peak_memory_gb_both_models": round(
            torch.cuda.max_memory_allocated(device) / 2**30, 2)} if device.type == "cuda" else {}),
    }


def images_per_second(width: float, *, amp: bool, channels_last: bool, args: argparse.Namespace,
                      device: torch.device) -> dict[str, float]:
    """Training (forward, backward, SGD step) and inference images/s of one width."""
    batch = args.batch_size
    steps, warmup = (1, 1) if args.quick else (30, 5)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_backbone("resnet18", num_classes=100, in_chans=3, width=width,
                            small_stem=True).to(device).to(memory_format=fmt)
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=device).contiguous(
        memory_format=fmt)
    y = torch.randint(0, 100, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def train(n: int) -> None:
        for _ in range(n):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    @torch.inference_mode()
    def infer(n: int) -> None:
        for _ in range(n):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                model.features(x)

    model.train()
    train(warmup)
    train_s = timed(lambda: train(steps), device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    model.eval()
    infer(warmup)
    infer_s = timed(lambda: infer(steps), device)
    out = {"train_img_s": round(steps * batch / train_s),
           "infer_img_s": round(steps * batch / infer_s),
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    if peak is not None:
        out["train_peak_memory_gb"] = round(peak, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: run the same code on the CPU (with --quick: a smoke test)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each loop (>= 2)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--widths", default="1,2,4",
                        help="ResNet-18 widths for images/s; 'none': claim 1 only")
    parser.add_argument("--loop-width", type=float, default=1.0,
                        help="ResNet-18 width of the trainable-vs-bare comparison")
    parser.add_argument("--compile", action="store_true", help="torch.compile both loops")
    parser.add_argument("--fp32", action="store_true", help="claim 1 without bf16 autocast")
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes: 2 epochs of 32 images, batch 8, 1 timed step per width")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.batch_size = 2, min(args.batch_size, 8)
    args.epochs = max(2, args.epochs)
    widths = [] if args.widths == "none" else [float(w) for w in args.widths.split(",")]
    base = {"benchmark": "gpu_throughput", "torch": torch.__version__,
            "cuda_build": torch.version.cuda}
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({**base, "gpu": None, "note": "no GPU found (torch.cuda.is_available() "
                          "is False); nothing measured"}))
        return
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainable sets it
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    loop = trainable_vs_bare(args, device)
    per_width = {f"w{w:g}": images_per_second(w, amp=True, channels_last=True, args=args,
                                              device=device) for w in widths}
    result = {
        **base, "gpu": gpu, "device": device.type,
        "settings": {"batch_size": args.batch_size, "epochs": args.epochs,
                     "loop_width": args.loop_width,
                     "amp_bf16": not args.fp32, "channels_last": True,
                     "compile": args.compile, "image_size": IMAGE_SIZE, "quick": args.quick},
        **loop,
        "claim_ratio_le_1.05": loop["ratio"] <= 1.05,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    if widths:  # with --compile each width compiles once more: `--widths none` skips them
        fp32 = images_per_second(widths[0], amp=False, channels_last=False, args=args,
                                 device=device)
        result.update({"resnet18_small_stem_32px": per_width,
                       f"w{widths[0]:g}_fp32_contiguous": fp32,
                       "amp_speedup": round(per_width[f"w{widths[0]:g}"]["train_img_s"]
                                            / fp32["train_img_s"], 3)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
