"""The Ray Tune function trainable: pretrain one backbone and measure collapse and transfer.

Linear flow, nanoGPT style: config -> seeds, threads, device -> data -> backbone -> optimiser ->
(resume) -> for each epoch: train, maybe evaluate, report with a checkpoint. A loss that turns
NaN/inf ends the trial as `diverged` with one report; it never raises.
"""

from __future__ import annotations

import random
import tempfile
import time
import traceback
from typing import Any

import numpy as np
import ray
import torch
import torch.nn.functional as F
from ray import tune

from analysis import contract as names
from analysis.errors import InputError
from trainables.augment import BatchAugment, mixup, normalize
from trainables.backbones import create_backbone
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.collapse_controls import CollapseControls, fix_etf_head
from trainables.config import TrialConfig
from trainables.data import DataSplits, get_dataset_class, load_splits
from trainables.evaluate import DivergedError, build_banks, evaluate
from trainables.optim import build_optimizer, build_scheduler


def pretrain(config: dict[str, Any]) -> None:
    """Ray Tune entry point: `config` is the flat trial config (TrialConfig.flat()).

    Bad input for this trial's config (an InputError: more classes or images than the data
    set has, an episode larger than a class, ...) fails the trial once, with a `failed` report
    that carries the trace; retrying cannot help. Anything else raises, and Ray retries the
    trial from its last checkpoint up to `search.max_failures` times (a lost worker, OOM).
    """
    try:
        run_trial(config)
    except InputError:
        tune.report({"trial_status": "failed", "error": traceback.format_exc()})


def run_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one trial from its flat config, on its CPU/GPU share,
    resumed from Tune's checkpoint if there is one."""
    cfg = TrialConfig.from_flat(config)
    resources = trial_resources()
    share = None if resources is None else float(resources.get("GPU", 0.0))
    device = pick_device(cfg.training.device, gpus=share)
    limit_gpu_memory(device, share)
    trainer = Trainer(cfg, threads=trial_threads(resources), device=device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.restore(folder)
    # Where the trial runs, in every result (result.json, the ResultGrid): strings, so the MLflow
    # callback, which logs only numeric keys with a '/', leaves them out of the metrics.
    where = {"node_id": ray.get_runtime_context().get_node_id(), "device": device.type}
    trainer.fit(lambda metrics, state: report_to_tune({**metrics, **where}, state))


def report_to_tune(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Report one epoch's metrics to Tune, with a checkpoint of `state` when given (written to a
    temporary folder Tune then persists)."""
    if state is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(state, folder)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def trial_resources() -> dict[str, float] | None:
    """What Ray reserved for this trial, e.g. {"CPU": 1, "GPU": 0.25}; None outside Tune."""
    try:
        return dict(tune.get_context().get_trial_resources().required_resources)
    except Exception:  # outside a Tune session (tests, benchmarks)
        return None


def trial_threads(resources: dict[str, float] | None = None) -> int:
    """torch threads = the trial's CPU share (so concurrent trials don't oversubscribe)."""
    if resources is None:
        return max(1, torch.get_num_threads())
    return max(1, int(resources.get("CPU", 1)))


def pick_device(choice: str, *, gpus: float | None = None) -> torch.device:
    """The training device for `training.device`.

    "auto" takes the GPU only when CUDA is visible and the trial holds a GPU share (`gpus` > 0;
    None outside Ray counts as yes): Ray 2.60 no longer hides the GPUs from a task that asked for
    none (CUDA_VISIBLE_DEVICES stays unset), so a CPU trial on a GPU node would otherwise use GPU 0
    without Ray knowing.

    Raises:
        InputError: "cuda" where no CUDA device is visible.
    """
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise InputError("training.device: 'cuda' but this process sees no CUDA device; "
                             "allowed here: 'auto' or 'cpu' (on a cluster, give trials a GPU "
                             "with resources.gpus_per_trial)")
        return torch.device("cuda")
    use_gpu = torch.cuda.is_available() and (gpus is None or gpus > 0)
    return torch.device("cuda" if use_gpu else "cpu")


def limit_gpu_memory(device: torch.device, share: float | None) -> None:
    """Cap this process's CUDA allocator at its fraction of the GPU (`gpus_per_trial` < 1).

    Ray shares a GPU between trials by bookkeeping only: it does not isolate GPU memory. With the
    cap, a trial that outgrows its share fails with its own out-of-memory error instead of
    starving the trials beside it. (The CUDA context, ~0.3-0.5 GB per process, is outside the cap.)
    """
    if device.type == "cuda" and share is not None and 0 < share < 1:
        # An index, not torch.device("cuda"): this one torch call rejects a device without one.
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.set_per_process_memory_fraction(float(share), index)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, so that a trial's initial weights depend on its seed alone."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """State of one trial's pretraining, kept apart from Ray so tests can drive it directly."""

    def __init__(self, cfg: TrialConfig, *, threads: int, device: torch.device,
                 data: DataSplits | None = None) -> None:
        torch.set_num_threads(threads)
        seed_everything(cfg.training.seed)
        self.cfg, self.device, self.threads = cfg, device, threads
        # The whole data set lives on the training device (uint8: 3 MB per 1,000 RGB 32x32
        # images): batches are index gathers there, with no loader, no pinned memory and no
        # host-to-device copy per batch. On the CPU `.to` keeps the memory-mapped arrays.
        self.data: DataSplits = (data if data is not None else load_splits(cfg.dataset)).to(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick kernels once
        self.num_classes = len(self.data.source_train.class_names)
        bb = cfg.backbone
        self.model = create_backbone(
            bb.name, num_classes=self.num_classes,
            in_chans=int(self.data.source_train.images.shape[1]), width=bb.width,
            small_stem=bb.small_stem, drop_rate=bb.dropout, drop_path_rate=bb.drop_path,
        ).to(device)
        tr = cfg.training
        if tr.etf_head:  # before the optimiser is built: the frozen head is not in its groups
            fix_etf_head(self.model.classifier, seed=tr.seed)
        self.controls = CollapseControls(self.num_classes, self.model.feature_dim,
                                         center_weight=tr.center_loss,
                                         entropy_weight=tr.feature_entropy).to(device)
        if cfg.training.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Training steps go through the compiled module; evaluation calls model.features, which
        # is not compiled: it runs every `eval_every` epochs at other batch shapes.
        self.forward = torch.compile(self.model) if cfg.training.compile else self.model
        n = len(self.data.source_train.labels)
        self.steps_per_epoch = max(1, n // min(cfg.training.batch_size, n))
        self.optimizer = build_optimizer(self.model, cfg.training)
        self.scheduler = build_scheduler(self.optimizer, cfg.training, self.steps_per_epoch)
        flip = get_dataset_class(cfg.dataset.name).mirror_invariant  # photos, not glyphs
        self.augment = BatchAugment(cfg.dataset.image_size, mode="pad_crop", flip=flip,
                                    strength=cfg.training.aug_strength)
        self.banks = {k: b.to(device) for k, b in build_banks(self.data.target,
                                                               cfg.evaluation).items()}
        self.term_sums: dict[str, torch.Tensor] = {}  # the controls' terms, per epoch
        self.epoch = 0

    # ---- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a checkpoint must hold to continue exactly: model, optimizer, scheduler,
        epoch."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                **({"controls": self.controls.state_dict()} if self.controls.needs_features
                   else {})}

    def restore(self, folder: str) -> None:
        """Load a checkpoint written by `state()` and continue from its epoch."""
        state = load_checkpoint(folder)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "controls" in state:
            self.controls.load_state_dict(state["controls"])
        self.epoch = int(state["epoch"])

    # ---- the loop --------------------------------------------------------------------------------
    def diverged(self, loss: float) -> bool:
        """A non-finite loss, or one 10x that of chance (ln C): the weights have blown up
        (lr = 1e3 gives losses of ~1e7 with finite weights, then overflowing features)."""
        return not np.isfinite(loss) or loss > 10 * np.log(self.num_classes)

    def fit(self, report: Any) -> None:
        """Train the remaining epochs; evaluate every `eval_every` and at the last; report each
        epoch (a diverged trial reports once and stops)."""
        cfg = self.cfg
        while self.epoch < cfg.training.epochs:
            self.epoch += 1
            metrics = self.train_epoch()
            metrics["epoch"] = self.epoch
            last = self.epoch == cfg.training.epochs
            try:
                if self.diverged(metrics[names.TRAIN_LOSS]):
                    raise DivergedError(metrics[names.TRAIN_LOSS])
                if last or self.epoch % cfg.evaluation.eval_every == 0:
                    metrics.update(evaluate(self.model, self.data, self.banks, cfg.evaluation,
                                            self.device, amp=cfg.training.amp,
                                            channels_last=cfg.training.channels_last))
            except DivergedError:
                report({"epoch": self.epoch, "trial_status": "diverged"}, None)
                return
            report({**metrics, "trial_status": "completed" if last else "running"},
                   self.state())

    def epoch_generator(self) -> torch.Generator:
        """Shuffling, augmentation and mixup draw from (seed, epoch) alone, so a trial resumed
        from a checkpoint sees exactly the batches an uninterrupted one would. The generator
        lives on the training device, so on a GPU the random numbers are drawn there too."""
        torch.manual_seed(self.cfg.training.seed * 100_003 + self.epoch)  # dropout, drop-path
        gen = torch.Generator(device=self.device)
        return gen.manual_seed(self.cfg.training.seed * 1_000_003 + self.epoch)

    def train_epoch(self) -> dict[str, float]:
        """One pass over source-train in batches from the epoch's generator; loss and hits
        accumulate on the device, synced once at the end."""
        cfg, split = self.cfg.training, self.data.source_train
        gen = self.epoch_generator()
        order = torch.randperm(len(split.labels), generator=gen, device=self.device)
        batch = min(cfg.batch_size, len(order))
        self.model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        self.term_sums = {}
        seen = 0
        for step in range(self.steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            images, labels = split.images[idx], split.labels[idx]  # all on self.device
            loss, hits = self.train_step(images, labels, gen)
            loss_sum += loss.detach() * len(idx)
            correct += hits
            seen += len(idx)
            if step % 20 == 19 and self.diverged((loss_sum / seen).item()):
                break  # diverged: stop spending compute on NaNs
        elapsed = time.perf_counter() - start
        control_names = {"center": names.CENTER_LOSS, "entropy": names.ENTROPY_LOSS}
        return {names.TRAIN_LOSS: (loss_sum / max(seen, 1)).item(),
                names.TRAIN_ACC: (correct / max(seen, 1)).item(),
                names.TRAIN_TIME: elapsed, names.THROUGHPUT: seen / max(elapsed, 1e-9),
                **{control_names[k]: (v / max(seen, 1)).item()
                   for k, v in self.term_sums.items()}}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment, forward (bf16 autocast if asked), label-smoothed cross-entropy in float32, one
        optimizer and scheduler step."""
        cfg = self.cfg.training
        x = self.augment(images, gen) if cfg.aug_strength > 0 else normalize(images)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target: torch.Tensor = labels
        if cfg.mixup_alpha > 0:
            x, target = mixup(x, labels, cfg.mixup_alpha, self.num_classes, gen)
        # bf16 autocast around the forward pass only; the loss and its softmax in float32.
        if self.controls.needs_features:
            return self.controlled_step(x, labels, target)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        hits = (logits.detach().argmax(1) == labels).sum()
        return loss, hits

    def controlled_step(self, x: torch.Tensor, labels: torch.Tensor,
                        target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A step with the feature terms on: CE + lambda_c L_C + lambda_e L_E
        (trainables.collapse_controls), then Wen et al.'s centre update. Runs the uncompiled
        model: the features and the logits come from one pass (features, then the classifier)."""
        cfg = self.cfg.training
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            feats = self.model.features(x)
            logits = self.model.classifier(feats)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
        terms = self.controls.terms(feats.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.controls.weighted(terms)).backward()
        self.optimizer.step()
        self.scheduler.step()
        self.controls.after_step(feats, labels)
        for key, value in terms.items():
            before = self.term_sums.get(key, torch.zeros((), device=self.device))
            self.term_sums[key] = before + value.detach() * len(labels)
        hits = (logits.detach().argmax(1) == labels).sum()
        return loss, hits
