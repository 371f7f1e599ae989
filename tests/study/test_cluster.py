"""cluster.yaml against the schema shipped in the installed ray, and `nctune cluster check`."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import validate_config

from analysis.errors import InputError
from study.commands.cluster import (
    TrialResources,
    check_presets_fit,
    node_types,
    read_preset_resources,
    trials_per_node,
)
from study.commands.cluster_schema import (
    GPU_HINT,
    check_cluster_config,
    load_cluster_file,
    placeholders,
    prepare,
    ray_schema,
)

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture
def raw() -> dict[str, Any]:
    return load_cluster_file(CLUSTER_YAML)


def write_preset(tmp_path: Path, name: str, resources: dict[str, Any] | None) -> Path:
    path = tmp_path / f"{name}.yaml"
    body: dict[str, Any] = {"name": name}
    if resources is not None:
        body["resources"] = resources
    path.write_text(yaml.safe_dump(body))
    return path


# ---- the shipped file ------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_own_schema_after_its_default_filling(raw):
    config = prepare(raw)
    # The schema file inside the installed ray package, and Ray's own validator, directly.
    jsonschema.validate(config, ray_schema())
    validate_config(config)
    assert check_cluster_config(raw) == []


def test_cluster_yaml_has_a_cpu_head_and_gpu_workers_scaling_from_zero(raw):
    config = prepare(raw)
    head, *workers = node_types(config)
    assert head.is_head and head.gpus == 0 and head.max_workers == 0
    gpu = [n for n in workers if n.gpus >= 1]
    assert gpu, "no GPU worker node type"
    assert all(n.min_workers == 0 and 0 < n.max_workers <= config["max_workers"] for n in gpu)
    assert config["idle_timeout_minutes"] > 0
    for t in raw["available_node_types"].values():  # declared, not left to the AWS lookup
        assert {"CPU", "GPU"} <= set(t["resources"])
        assert all(isinstance(v, int) for v in t["resources"].values())


def test_cluster_yaml_uses_the_plain_ray_image_of_the_installed_version(raw):
    images = [raw["docker"]["head_image"], raw["docker"]["worker_image"]]
    assert all(i.startswith(f"rayproject/ray:{ray.__version__}-py311-") for i in images)
    assert raw["docker"]["worker_image"].endswith("-gpu")
    assert "ray-ml" not in yaml.safe_dump(raw)


def test_cluster_yaml_installs_this_checkout_and_turns_on_token_auth(raw):
    assert raw["file_mounts"]["~/nctune"] == "."
    assert any("pip install" in c and "~/nctune" in c for c in raw["setup_commands"])
    assert ".gitignore" in raw["rsync_filter"]  # keeps .venv and nctune-runs off the nodes
    for cmds in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token" in c and "ray start" in c for c in cmds)
    assert "~/.ray/auth_token" in raw["file_mounts"]


def test_cluster_yaml_marks_what_the_user_must_edit(raw):
    todo = placeholders(raw)
    assert "available_node_types.head.node_config.ImageId" in todo
    assert "available_node_types.gpu_worker.node_config.IamInstanceProfile.Arn" in todo
    assert "EDIT: your region" in CLUSTER_YAML.read_text()


def test_every_preset_fits_some_worker_node_type(raw):
    presets = sorted((REPO / "study" / "presets").glob("*.yaml"))
    assert presets, "no presets found in study/presets/"
    assert check_presets_fit(prepare(raw), presets) == []


# ---- broken copies: one plain sentence each, and Ray itself refuses them too -----------------


def test_misspelled_key_is_named_with_a_suggestion(raw):
    raw["max_worker"] = raw.pop("max_workers")
    assert check_cluster_config(raw) == [
        "unknown key 'max_worker' at top level; did you mean 'max_workers'?"
    ]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare(raw))


def test_misspelled_key_inside_a_node_type(raw):
    raw["available_node_types"]["gpu_worker"]["max_worker"] = 4
    (problem,) = check_cluster_config(raw)
    assert problem == (
        "unknown key 'max_worker' in available_node_types.gpu_worker; did you mean 'max_workers'?"
    )


def test_fractional_gpu_count_points_to_the_per_trial_setting(raw):
    raw["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    assert check_cluster_config(raw) == [
        f"available_node_types.gpu_worker.resources.GPU: 0.5 is not an integer; {GPU_HINT}"
    ]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare(raw))


def test_missing_head_node_type(raw):
    del raw["head_node_type"]
    (problem,) = check_cluster_config(raw)
    assert problem.startswith("head_node_type is missing")
    assert "head, gpu_worker" in problem


def test_head_node_type_not_among_the_node_types(raw):
    del raw["available_node_types"]["head"]
    assert check_cluster_config(raw) == [
        "head_node_type 'head' is not one of available_node_types: gpu_worker"
    ]
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare(raw))


def test_several_problems_are_all_reported(raw):
    raw["max_worker"] = raw.pop("max_workers")
    raw["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    raw["available_node_types"]["gpu_worker"]["max_workers"] = "four"
    problems = check_cluster_config(raw)
    assert len(problems) == 3
    assert "available_node_types.gpu_worker.max_workers: 'four' is not an integer" in problems


def test_missing_required_key_and_undeclared_gpu(raw):
    del raw["available_node_types"]["gpu_worker"]["node_config"]
    assert check_cluster_config(raw) == [
        "available_node_types.gpu_worker: required key 'node_config' is missing"
    ]
    raw = load_cluster_file(CLUSTER_YAML)
    del raw["available_node_types"]["gpu_worker"]["resources"]["GPU"]
    (problem,) = check_cluster_config(raw)
    assert problem.startswith("available_node_types.gpu_worker.resources: declare GPU explicitly")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["provider"].update(type="awz"), "did you mean 'aws'?"),
        (lambda c: c["docker"].update(worker_image="rayproject/ray-ml:2.49.0-gpu"), "ray-ml"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=5),
            "sum of the node types' min_workers (5)",
        ),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(max_workers=0),
            "no worker node type can start",
        ),
    ],
)
def test_other_broken_copies(raw, edit, expected):
    edit(raw)
    problems = check_cluster_config(raw)
    assert any(expected in p for p in problems), problems


# ---- presets against node types ------------------------------------------------------------


def test_preset_fit_uses_cpus_and_gpus_per_trial(raw, tmp_path):
    config = prepare(raw)  # gpu_worker: 4 CPU, 1 GPU
    fits = [
        write_preset(tmp_path, "quarter", {"cpus_per_trial": 1, "gpus_per_trial": 0.25}),
        write_preset(tmp_path, "whole", {"cpus_per_trial": 4, "gpus_per_trial": 1}),
        write_preset(tmp_path, "defaults", None),  # 1 CPU, 0 GPU
    ]
    assert check_presets_fit(config, fits) == []
    two_gpus = write_preset(tmp_path, "two", {"cpus_per_trial": 1, "gpus_per_trial": 2})
    eight_cpus = write_preset(tmp_path, "eight", {"cpus_per_trial": 8, "gpus_per_trial": 0.5})
    problems = check_presets_fit(config, [two_gpus, eight_cpus])
    assert len(problems) == 2
    assert problems[0].startswith("preset 'two'")
    assert (
        "asks 1 CPU and 2 GPU per trial; no worker node type fits: gpu_worker has 4 CPU, 1 GPU"
        in problems[0]
    )
    assert "asks 8 CPU and 0.5 GPU" in problems[1]


def test_head_does_not_count_as_a_place_for_trials(raw, tmp_path):
    raw["available_node_types"]["head"]["resources"] = {"CPU": 64, "GPU": 8}
    preset = write_preset(tmp_path, "big", {"cpus_per_trial": 16, "gpus_per_trial": 2})
    assert len(check_presets_fit(prepare(raw), [preset])) == 1


def test_bad_preset_resources_name_the_field(raw, tmp_path):
    bad = write_preset(tmp_path, "bad", {"cpus_per_trial": -1})
    with pytest.raises(InputError, match=r"resources\.cpus_per_trial"):
        read_preset_resources(bad)
    (problem,) = check_presets_fit(prepare(raw), [bad])
    assert "cpus_per_trial" in problem and "-1" in problem


def test_trials_per_node_takes_the_scarcer_resource(raw):
    _, worker = node_types(prepare(raw))

    def per_node(cpus: float, gpus: float) -> int:
        return trials_per_node(TrialResources("p", Path("p.yaml"), cpus, gpus), worker)

    assert per_node(1, 0.25) == 4
    assert per_node(2, 0.25) == 2  # CPUs run out first
    assert per_node(0.4, 0.1) == 10  # not 9: 1 / 0.1 in floating point is 9.999...
    assert per_node(1, 0) == 4
    assert per_node(8, 0) == 0


# ---- the command, as a user runs it --------------------------------------------------------


def run_check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "study.cli", "cluster", "check", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_cli_accepts_the_shipped_file_and_summarises_it():
    out = run_check(str(CLUSTER_YAML), cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert f"OK for ray {ray.__version__}" in out.stdout
    assert "gpu_worker     g5.xlarge    4 CPU, 1 GPU (worker, 0..4 nodes)" in out.stdout
    assert "at most 4 workers" in out.stdout
    assert "replace the EDIT-ME values in" in out.stdout


def test_cli_explains_broken_copies_and_exits_2(tmp_path):
    text = CLUSTER_YAML.read_text()
    broken = {
        "misspelled": text.replace("\nmax_workers: 4", "\nmax_worker: 4"),
        "fractional": text.replace("{CPU: 4, GPU: 1}", "{CPU: 4, GPU: 0.5}"),
        "headless": text.replace("\nhead_node_type: head", "\n"),
    }
    assert all(b != text for b in broken.values())
    for name, body in broken.items():
        (tmp_path / f"{name}.yaml").write_text(body)
    expected = {
        "misspelled": "unknown key 'max_worker' at top level; did you mean 'max_workers'?",
        "fractional": "available_node_types.gpu_worker.resources.GPU: 0.5 is not an integer",
        "headless": "head_node_type is missing",
    }
    for name, sentence in expected.items():
        out = run_check(f"{name}.yaml", cwd=tmp_path)
        assert out.returncode == 2, (name, out.stdout, out.stderr)
        assert f"nctune: error: {name}.yaml has 1 problem:" in out.stderr
        assert sentence in out.stderr
        assert "Traceback" not in out.stderr


def test_cli_checks_a_given_preset_and_a_missing_file(tmp_path):
    preset = write_preset(tmp_path, "greedy", {"cpus_per_trial": 2, "gpus_per_trial": 3})
    out = run_check(str(CLUSTER_YAML), "--preset", str(preset), cwd=tmp_path)
    assert out.returncode == 2
    assert "preset 'greedy'" in out.stderr and "no worker node type fits" in out.stderr
    out = run_check("nowhere.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert "cluster file 'nowhere.yaml' does not exist" in out.stderr


def test_prepare_does_not_change_its_input(raw):
    before = copy.deepcopy(raw)
    prepare(raw)
    assert raw == before
