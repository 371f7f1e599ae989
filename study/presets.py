"""Presets: YAML study configs that ship with nctune (study/presets/*.yaml), or a user's file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from analysis.errors import InputError
from study.config import StudyConfig, apply_overrides

PRESET_DIR = Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    """Names of the presets that ship with nctune."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_preset(name_or_path: str) -> dict[str, Any]:
    """A file path if one exists, else a preset name."""
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        if name_or_path not in list_presets():
            raise InputError(
                f"preset: '{name_or_path}' is neither a YAML file nor a preset; presets: "
                f"{', '.join(list_presets())}"
            )
        path = PRESET_DIR / f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"preset: {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"preset: {path} must hold a mapping of sections, not {type(data)}")
    return data


def load_study_config(name_or_path: str, overrides: list[str] | None = None,
                      name: str | None = None) -> StudyConfig:
    """Preset + `--set` overrides + `--name`, validated in one go (pydantic errors propagate)."""
    data = read_preset(name_or_path)
    try:
        apply_overrides(data, overrides or [])
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if name is not None:
        data["name"] = name
    return StudyConfig.model_validate(data)


def dump_config(cfg: StudyConfig) -> str:
    """The resolved config as YAML (what the study actually ran with)."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=False), sort_keys=False)
