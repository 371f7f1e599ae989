"""A cluster-launcher file checked offline the way `ray up` checks it before it talks to the cloud.

Ray's own default-filling (`ray.autoscaler._private.util.prepare_config`, which only reads the
provider's defaults.yaml), the schema in the installed ray package (ray/autoscaler/ray-schema.json)
and Ray's cross-field checks, each problem turned into one plain sentence; then nctune's own rule
that every node type declares CPU and GPU (the AWS launcher looks them up in the cloud only during
`ray up`). The provider's bootstrap (key pairs, IAM, subnets, instance-type lookups), the only part
that calls cloud APIs, is left out. `study.commands.cluster` adds the presets' fit and the command.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from analysis.errors import InputError

PLACEHOLDER = "EDIT-ME"  # values the user must replace before `ray up` contain this marker
GPU_HINT = (
    "node resources must be whole numbers (fractional GPUs are asked per trial, in the "
    "preset's resources.gpus_per_trial)"
)

# ---- Ray's own machinery, offline --------------------------------------------------------------


def load_cluster_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a cluster-launcher YAML file; a missing, unreadable or non-mapping file is an error."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cluster file '{p}' does not exist (give the path to cluster.yaml)")
    try:
        config = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"cluster file '{p}' is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise InputError(f"cluster file '{p}' must hold a mapping of settings, got {config!r:.60}")
    return config


@contextlib.contextmanager
def _quiet_ray() -> Iterator[None]:
    """Ray's config helpers log INFO lines and print warnings meant for `ray up`; keep them out."""
    log = logging.getLogger("ray.autoscaler")
    level = log.level
    log.setLevel(logging.WARNING + 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def prepare(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's default-filling, as `ray up` runs it before validating (offline for AWS)."""
    from ray.autoscaler._private.util import prepare_config

    with _quiet_ray():
        return prepare_config(copy.deepcopy(config))


def ray_schema() -> dict[str, Any]:
    """The schema `ray up` validates against, read from the installed ray package."""
    import ray.autoscaler

    schema: dict[str, Any] = json.loads(
        (Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text()
    )
    return schema


def known_providers() -> list[str]:
    """Node providers Ray's autoscaler knows (its default configs) plus 'external'."""
    from ray.autoscaler._private.providers import _DEFAULT_CONFIGS

    return sorted({*_DEFAULT_CONFIGS, "external"})


# ---- the checks --------------------------------------------------------------------------------


def check_cluster_config(raw: dict[str, Any]) -> list[str]:
    """All problems with a cluster config, as plain sentences; empty when `ray up` would accept it.

    Args:
        raw: the file's content as loaded, before Ray fills in its defaults.
    """
    problems = _before_filling(raw)
    if any(p.startswith("provider") for p in problems):
        return problems  # Ray picks its defaults by provider: nothing more can be checked
    try:
        config = prepare(raw)
    except Exception as exc:  # Ray's helpers assert and index freely on malformed input
        return [*problems, f"Ray could not fill in its defaults for this file: {exc!r}"]
    problems += schema_problems(config)
    if problems:
        return problems
    problems = _cross_field(raw, config)
    if problems:
        return problems
    from ray.autoscaler._private.util import validate_config

    try:  # Ray's own final word, in case it checks something the sentences above do not
        with _quiet_ray():
            validate_config(config)
    except Exception as exc:
        return [f"Ray's own check refuses the file: {exc}"]
    return []


def _before_filling(raw: dict[str, Any]) -> list[str]:
    """What Ray's default-filling would trip over or hide (it fills in a head type of its own)."""
    problems = []
    provider = raw.get("provider")
    if not isinstance(provider, dict) or "type" not in provider:
        problems.append("provider is missing or has no 'type'; e.g. {type: aws, region: us-west-2}")
    elif provider["type"] not in known_providers():
        problems.append(
            f"provider.type '{provider['type']}' is not a provider Ray knows; known: "
            + ", ".join(known_providers())
            + _did_you_mean(str(provider["type"]), known_providers())
        )
    types = raw.get("available_node_types")
    if not isinstance(types, dict) or not types:
        problems.append(
            "available_node_types is missing or empty; declare a head node type and at least "
            "one worker node type, each with its resources and node_config"
        )
    elif "head_node_type" not in raw:
        problems.append(
            "head_node_type is missing; set it to the node type that runs the study driver, one "
            "of available_node_types: " + ", ".join(types)
        )
    return problems


def schema_problems(config: dict[str, Any]) -> list[str]:
    """Validates against Ray's schema, turning each jsonschema error into a plain sentence."""
    import jsonschema

    schema = ray_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return [sentence for e in errors for sentence in _explain(e)]


def _where(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "top level"


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


_KINDS = {"integer": "an integer", "object": "a mapping", "array": "a list", "number": "a number"}


def _explain(error: Any) -> list[str]:
    """Sentences for one jsonschema error, named by the dotted path of the offending value."""
    path = list(error.absolute_path)
    where = _where(path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
        unknown = [k for k in error.instance if k not in allowed]
        place = f"in {where}" if path else "at top level"
        return [
            f"unknown key '{k}' {place}"
            + (_did_you_mean(str(k), allowed) or "; allowed: " + ", ".join(allowed))
            for k in unknown
            if not any(p.search(str(k)) for p in patterns)
        ]
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [f"{where}: required key '{k}' is missing" for k in missing]
    if error.validator == "type":
        wanted = error.validator_value
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        text = " or ".join(_KINDS.get(n, f"a {n}") for n in names)
        sentence = f"{where}: {error.instance!r:.60} is not {text}"
        if len(path) == 4 and path[0] == "available_node_types" and path[2] == "resources":
            sentence += f"; {GPU_HINT}"
        return [sentence]
    return [f"{where}: {error.message}"]  # e.g. "-1 is less than the minimum of 0"


def _cross_field(raw: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Ray's checks across fields (collected, not raised one at a time) plus nctune's rules."""
    problems = []
    types: dict[str, Any] = config["available_node_types"]
    head = config["head_node_type"]
    if head not in types:
        problems.append(
            f"head_node_type '{head}' is not one of available_node_types: "
            + ", ".join(types)
            + _did_you_mean(str(head), list(types))
        )
    elif not any(t["max_workers"] > 0 for name, t in types.items() if name != head):
        problems.append("no worker node type can start (max_workers is 0 for all but the head)")
    total_min = sum(t["min_workers"] for t in types.values())
    if total_min > config["max_workers"]:
        problems.append(
            f"max_workers {config['max_workers']} is smaller than the sum of the node types' "
            f"min_workers ({total_min}); raise max_workers or lower min_workers"
        )
    for name, t in types.items():
        if t["min_workers"] > t["max_workers"]:
            problems.append(
                f"available_node_types.{name}: min_workers {t['min_workers']} is larger than its "
                f"max_workers {t['max_workers']}"
            )
        missing = [
            r for r in ("CPU", "GPU") if r not in raw["available_node_types"][name]["resources"]
        ]
        if missing and config["provider"]["type"] == "aws":
            problems.append(
                f"available_node_types.{name}.resources: declare {' and '.join(missing)} "
                "explicitly (e.g. {CPU: 4, GPU: 1} for a g5.xlarge); the AWS launcher looks "
                "them up only during `ray up`, too late to check presets against them"
            )
    for where, image in docker_images(config):
        if image.startswith("rayproject/ray-ml"):
            problems.append(
                f"{where}: '{image}' does not exist for the Ray nctune needs (>= 2.50): the "
                "rayproject/ray-ml images are no longer published after Ray 2.49; use "
                "rayproject/ray:<version>-py311-gpu and install nctune in setup_commands"
            )
    return problems


def docker_images(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(dotted path, image) for every container image the file names."""
    docker = config.get("docker") or {}
    found = [
        (f"docker.{k}", str(docker.get(k, ""))) for k in ("image", "head_image", "worker_image")
    ]
    for name, t in config["available_node_types"].items():
        found.append(
            (
                f"available_node_types.{name}.docker.worker_image",
                str((t.get("docker") or {}).get("worker_image", "")),
            )
        )
    return [(where, image) for where, image in found if image]


def reminders(raw: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """What a valid file still needs before `ray up`: placeholders, local files, Ray versions."""
    import ray

    out = []
    if todo := placeholders(raw):
        out.append(f"replace the {PLACEHOLDER} values in: " + ", ".join(todo))
    for remote, local in config["file_mounts"].items():
        if not Path(str(local)).expanduser().exists():
            hint = " (`ray get-auth-token --generate` makes it)" if "auth_token" in local else ""
            out.append(f"file_mounts['{remote}']: local path '{local}' does not exist here{hint}")
    for where, image in docker_images(config):
        version = image.rpartition(":")[2].split("-")[0] if ":" in image else "latest"
        if image.startswith("rayproject/ray:") and version != ray.__version__:
            out.append(
                f"{where} runs Ray {version} but this machine has Ray {ray.__version__}; "
                "`ray up` and `ray job submit` need the same version on both sides"
            )
    return out


def placeholders(config: Any, path: tuple[Any, ...] = ()) -> list[str]:
    """Dotted paths of values that still hold the EDIT-ME marker."""
    if isinstance(config, dict):
        return [p for k, v in config.items() for p in placeholders(v, (*path, k))]
    if isinstance(config, list):
        return [p for i, v in enumerate(config) for p in placeholders(v, (*path, i))]
    return [_where(path)] if isinstance(config, str) and PLACEHOLDER in config else []
