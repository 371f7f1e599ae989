"""`nctune cluster check`: the offline check of a Ray cluster-launcher file (cluster.yaml).

First the file itself, as `ray up` would check it (`study.commands.cluster_schema`: Ray's
default-filling, its ray-schema.json, its cross-field checks, in plain sentences); then that
every preset's per-trial resources fit some worker node type, and how many trials each node
type runs at once.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from analysis.errors import InputError
from study.commands.cluster_schema import (
    check_cluster_config,
    load_cluster_file,
    prepare,
    reminders,
)

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class NodeType:
    """What the autoscaler may start of one node type, after Ray's default-filling."""

    name: str
    instance_type: str
    cpus: float
    gpus: float
    min_workers: int
    max_workers: int
    is_head: bool


@dataclass(frozen=True)
class TrialResources:
    """What one trial of a preset holds (the preset's `resources:` section)."""

    preset: str
    path: Path
    cpus: float
    gpus: float


# ---- what the cluster offers, and the presets' fit ---------------------------------------------


def node_types(config: dict[str, Any]) -> list[NodeType]:
    """The node types of a prepared (default-filled) config, head first."""
    out = [
        NodeType(
            name=name,
            instance_type=str(t["node_config"].get("InstanceType", "?")),
            cpus=float(t["resources"].get("CPU", 0)),
            gpus=float(t["resources"].get("GPU", 0)),
            min_workers=int(t["min_workers"]),
            max_workers=int(t["max_workers"]),
            is_head=name == config["head_node_type"],
        )
        for name, t in config["available_node_types"].items()
    ]
    return sorted(out, key=lambda n: not n.is_head)


def read_preset_resources(path: str | os.PathLike[str]) -> TrialResources:
    """The `resources:` section of a preset file, checked by the study config's own model."""
    from pydantic import ValidationError

    from study.config import ResourcesConfig

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
        res = ResourcesConfig.model_validate(data.get("resources") or {})
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise InputError(f"preset '{p}' cannot be read as a mapping: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(section)"
        raise InputError(
            f"preset '{p}': resources.{field}: {err['msg']} (got {err.get('input')!r:.60})"
        ) from None
    return TrialResources(p.stem, p, float(res.cpus_per_trial), float(res.gpus_per_trial))


def trials_per_node(res: TrialResources, node: NodeType) -> int:
    """How many trials of a preset one node runs at once; 0 when not even one fits.

    A trial fits a node type when cpus_per_trial <= its CPU and gpus_per_trial <= its GPU.
    """
    # Ray counts resources in units of 1e-4: 1 GPU / 0.1 is 10 trials, not 9.
    counts = [
        math.floor(have / ask + 1e-6)
        for have, ask in ((node.cpus, res.cpus), (node.gpus, res.gpus))
        if ask > 0
    ]
    return min(counts) if counts else 0


def worker_types(config: dict[str, Any]) -> list[NodeType]:
    """The cluster file's worker node types that can start at least one node."""
    return [n for n in node_types(config) if not n.is_head and n.max_workers > 0]


def check_presets_fit(
    config: dict[str, Any], preset_paths: Sequence[str | os.PathLike[str]]
) -> list[str]:
    """Problems for presets whose per-trial resources fit no worker node type that can start.

    Args:
        config: a prepared (default-filled) cluster config that passed `check_cluster_config`.
        preset_paths: preset YAML files, each with an optional `resources:` section.
    """
    workers = worker_types(config)
    offered = "; ".join(f"{n.name} has {n.cpus:g} CPU, {n.gpus:g} GPU" for n in workers)
    problems = []
    for path in preset_paths:
        try:
            res = read_preset_resources(path)
        except InputError as exc:
            problems.append(str(exc))
            continue
        if not any(trials_per_node(res, n) for n in workers):
            problems.append(
                f"preset '{res.preset}' ({res.path}) asks {res.cpus:g} CPU and {res.gpus:g} GPU "
                f"per trial; no worker node type fits: {offered or 'there are none'}"
            )
    return problems


def default_presets() -> list[Path]:
    """The presets shipped with nctune, which `nctune cluster check` fits against the cluster."""
    return sorted(PRESETS_DIR.glob("*.yaml"))


# ---- the command -------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Add `nctune cluster check` to the CLI."""
    p = sub.add_parser("cluster", help="work with the Ray cluster-launcher file (cluster.yaml)")
    actions = p.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)
    c = actions.add_parser(
        "check",
        help="check a cluster file offline against Ray's schema and the presets' resources",
        description="Checks FILE as `ray up` would before contacting the cloud (Ray's "
        "default-filling, its ray-schema.json, its cross-field checks), then that every "
        "preset's per-trial resources fit some worker node type. Exit 0 when fine, 2 if not.",
    )
    c.add_argument("file", nargs="?", default="cluster.yaml", help="default: ./cluster.yaml")
    c.add_argument(
        "--preset",
        action="append",
        metavar="FILE",
        help="preset YAML whose resources must fit (repeatable); default: the packaged presets",
    )
    c.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    """Check cluster.yaml as `ray up` would, and whether each preset's trials fit its worker nodes.
    """
    raw = load_cluster_file(args.file)
    presets = [Path(p) for p in args.preset] if args.preset else default_presets()
    problems = check_cluster_config(raw)
    if not problems:
        config = prepare(raw)
        problems = check_presets_fit(config, presets)
    if problems:
        s = "" if len(problems) == 1 else "s"
        raise InputError(
            f"{args.file} has {len(problems)} problem{s}:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    print(summary(args.file, raw, config, presets))
    return 0


def summary(file: str, raw: dict[str, Any], config: dict[str, Any], presets: Sequence[Path]) -> str:
    """The short report printed when the file is fine."""
    import ray

    provider = config["provider"]
    lines = [
        f"{file}: OK for ray {ray.__version__} (its ray-schema.json, after its default-filling)",
        f"  cluster '{config['cluster_name']}' on {provider['type']}, "
        f"region {provider.get('region', '-')}; at most {config['max_workers']} workers, "
        f"idle ones stop after {config['idle_timeout_minutes']:g} min",
    ]
    for n in node_types(config):
        role = "head" if n.is_head else f"worker, {n.min_workers}..{n.max_workers} nodes"
        lines.append(
            f"  {n.name:<14} {n.instance_type:<12} {n.cpus:g} CPU, {n.gpus:g} GPU ({role})"
        )
    lines.append(
        "  presets (per trial -> trials per node):"
        if presets
        else f"  presets: none in {PRESETS_DIR}"
    )
    idle = []
    for path in presets:
        res = read_preset_resources(path)
        packing = []
        for n in worker_types(config):
            if k := trials_per_node(res, n):
                packing.append(f"{k} per {n.name}")
                if res.gpus > 0 and n.gpus - k * res.gpus >= res.gpus:
                    idle.append(
                        f"preset '{res.preset}' leaves {n.gpus - k * res.gpus:g} of each "
                        f"{n.name}'s GPU idle: its CPUs run out first ({k} x {res.cpus:g} of "
                        f"{n.cpus:g}); lower cpus_per_trial or pick more vCPUs per GPU"
                    )
        lines.append(
            f"    {res.preset:<22} {res.cpus:g} CPU, {res.gpus:g} GPU -> {', '.join(packing)}"
        )
    lines += [f"  note: {item}" for item in idle]
    if todo := reminders(raw, config):
        lines += ["  before `ray up`:", *(f"    - {item}" for item in todo)]
    return "\n".join(lines)
