"""A tiny study config for tests: seconds per trial on one CPU."""

from __future__ import annotations

from pathlib import Path

from study.config import StudyConfig

TINY = {
    "dataset": {"name": "glyphs", "num_source_classes": 8, "num_target_classes": 8,
                "source_train_per_class": 6, "source_test_per_class": 3,
                "target_per_class": 8, "image_size": 16},
    "backbone": {"name": "test_resnet", "width": 1.0, "small_stem": True},
    "training": {"epochs": 2, "batch_size": 16, "lr": 0.05},
    "evaluation": {"eval_every": 1, "episodes": 20, "queries": 3, "probe_episodes": 5,
                   "features_per_class": 4},
    "search": {"sampler": "tpe", "num_samples": 3, "max_concurrent": 2, "seed": 0},
    "space": {"weight_decay": {"type": "log_float", "low": 1e-5, "high": 1e-2},
              "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2}},
    "resources": {"cpus_per_trial": 1},
}


def tiny_study(root: Path, name: str = "tiny", **sections) -> StudyConfig:
    data = {**TINY, "name": name, "storage": {"root": str(root)}}
    for key, value in sections.items():  # sections merge; a new search space replaces
        merge = isinstance(value, dict) and key != "space"
        data[key] = {**data.get(key, {}), **value} if merge else value
    return StudyConfig.model_validate(data)
