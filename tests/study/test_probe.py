"""`nctune probe` end to end: a real tiny study (2 trials x 2 epochs), real Ray tasks, a real
sqlite MLflow store, and a zoo of three timm models saved to disk (nothing downloads)."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from analysis import contract
from study.cli import main
from study.run.driver import run_study
from tests.study.studies import tiny_study

pytestmark = pytest.mark.slow

TARGET = ["--target", "digits", "--set", "dataset.target_per_class=10"]


@pytest.fixture(scope="module")
def study(tmp_path_factory, local_ray):
    """A finished tiny study that kept every evaluated epoch's checkpoint."""
    root = tmp_path_factory.mktemp("probe")
    cfg = tiny_study(root, name="tiny", search={"num_samples": 2},
                     training={"keep_checkpoints": "evaluated"})
    state = run_study(cfg, report=False)
    assert state.status == "completed"
    # keep_checkpoints: evaluated -> the weights of every evaluated epoch beside Tune's own
    for trial in (root / "ray" / "tiny").glob("t*/params.json"):
        kept = sorted(p.name for p in (trial.parent / "evaluated").glob("epoch_*.pt"))
        assert kept == ["epoch_000001.pt", "epoch_000002.pt"], kept
    return root, state


def runs_of(client: MlflowClient, parent_run_id: str):
    exp = client.get_experiment_by_name("nctune")
    return client.search_runs([exp.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_run_id}'")


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def probe(root, *args: str) -> int:
    return main(["probe", *args, "--root", str(root)])


def test_every_trial_is_probed_into_its_own_run_once(study, capsys):
    root, state = study
    client = MlflowClient(state.tracking_uri)
    before = {r.info.run_id: steps(client, r.info.run_id, "cdnv/target")
              for r in runs_of(client, state.parent_run_id)}
    assert probe(root, "tiny", *TARGET, "--epochs", "all") == 0
    out = capsys.readouterr().out
    assert "Probe 'digits' of study 'tiny': 2 trials, 4 checkpoints" in out
    assert "10 classes x 10 images, 1 channel 16x16" in out and "as trained on" in out
    assert "2/2 probed" in out and "Report:" in out
    shapes = ["5w1s", "5w5s"]
    expected = ({contract.collapse_key(f, "target") for f in contract.COLLAPSE_FAMILIES}
                | {contract.fewshot_key(s, c, st) for s in shapes
                   for c in ("ncc", "ncc_l2", "ncc_raw", "logreg") for st in ("acc", "ci95")}
                | {contract.bound_key(s) for s in shapes})
    for run in runs_of(client, state.parent_run_id):
        probed = {k for k in run.data.metrics if k.startswith("probe/")}
        assert probed >= {contract.probe_key("digits", k) for k in expected}
        for key in probed:
            assert steps(client, run.info.run_id, key) == [1, 2], key
        assert steps(client, run.info.run_id, "cdnv/target") == before[run.info.run_id]
        assert run.data.tags["nctune.probe.digits"] == "done: as trained on"
    settings = json.loads(client.get_run(state.parent_run_id).data.tags["nctune.probe.digits"])
    assert set(settings["episode_banks"]) == set(shapes) and settings["epochs"] == "all"
    # The same probe again: nothing to do, no step twice.
    assert probe(root, "tiny", *TARGET, "--epochs", "all", "--no-report") == 0
    assert "nothing to probe" in capsys.readouterr().out
    for run in runs_of(client, state.parent_run_id):
        assert steps(client, run.info.run_id, contract.probe_key("digits", "cdnv/target")) == [1, 2]
    # The same name with other settings is refused; nothing logged.
    assert probe(root, "tiny", "--target", "digits", "--set", "dataset.target_per_class=12",
                 "--epochs", "all") == 2
    assert "exists already in this study with other settings" in capsys.readouterr().err
    assert main(["analyze", "tiny", "--probe", "digits", "--tracking-uri", state.tracking_uri,
                 "--out", str(root / "report")]) == 0
    report = (root / "report" / "probe-digits" / "report.md").read_text()
    assert "in-domain: Spearman" in report and "probe: Spearman" in report


def test_bad_input_is_one_line_and_exit_2_with_nothing_logged(study, capsys, tmp_path):
    root, state = study
    client = MlflowClient(state.tracking_uri)
    tags_before = dict(client.get_run(state.parent_run_id).data.tags)
    assert probe(root, "nope", *TARGET) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert probe(root, "tiny", "--target", "digits", "--set", "dataset.num_target_classes=3",
                 "--name", "few") == 2
    assert "3 classes, fewer than the 5 ways of evaluation.shapes 5w1s" in \
        capsys.readouterr().err
    # A copy of the study whose checkpoints are gone, and one with a tampered checkpoint.
    for kind in ("empty", "tampered"):
        copy = tmp_path / kind
        shutil.copytree(root / "studies", copy / "studies")
        shutil.copytree(root / "ray", copy / "ray")
        meta = json.loads((copy / "studies" / "tiny" / "study.json").read_text())
        meta["ray_path"] = str(copy / "ray")
        (copy / "studies" / "tiny" / "study.json").write_text(json.dumps(meta))
        files = sorted((copy / "ray" / "tiny").glob("t*/checkpoint_*/trial.pt"))
        files += sorted((copy / "ray" / "tiny").glob("t*/evaluated/epoch_*.pt"))
        if kind == "empty":
            for f in files:
                f.unlink()
        else:
            files[0].write_bytes(b"PK\x03\x04 not a checkpoint")
        assert probe(copy, "tiny", *TARGET, "--name", kind) == 2
        err = capsys.readouterr().err
        assert ("no completed trial has a checkpoint" in err if kind == "empty"
                else "does not load as plain tensors" in err), err
        assert len(err.strip().splitlines()) == 1
    assert dict(client.get_run(state.parent_run_id).data.tags) == tags_before
    for run in runs_of(client, state.parent_run_id):
        assert not [k for k in run.data.metrics if k.startswith(("probe/few", "probe/empty",
                                                                 "probe/tampered"))]


def save_zoo(folder):
    """Three tiny timm models on disk: a .pth, a .safetensors and a Hugging Face cache folder."""
    specs = [("res", "test_resnet"), ("cnx", "test_convnext"), ("eff", "test_efficientnet")]
    for seed, (name, arch) in enumerate(specs):
        torch.manual_seed(seed)
        state = timm.create_model(arch, pretrained=False, num_classes=10).state_dict()
        state = {k: v.contiguous() for k, v in state.items()}
        if name == "res":
            torch.save(state, folder / "res.pth")
        elif name == "cnx":
            save_file(state, str(folder / "cnx.safetensors"))
        else:
            snap = folder / "hub" / "models--timm--test_efficientnet" / "snapshots" / "0abc"
            snap.mkdir(parents=True)
            save_file(state, str(snap / "model.safetensors"))
    weights = {"res": "res.pth", "cnx": "cnx.safetensors",
               "eff": "hub/models--timm--test_efficientnet"}
    lines = ["name: zoo", "evaluation: {episodes: 20, queries: 3, classifiers: [ncc]}",
             "models:"] + [f"  - {{name: {n}, arch: {a}, weights: {weights[n]}, image_size: 32}}"
                           for n, a in specs]
    (folder / "zoo.yaml").write_text("\n".join(lines) + "\n")
    return folder / "zoo.yaml"


def test_a_zoo_of_saved_timm_models_becomes_a_study_with_a_report(tmp_path, local_ray, capsys):
    zoo = save_zoo(tmp_path)
    root = tmp_path / "runs"
    # A weights file that does not fit its architecture: refused before anything is created.
    bad = tmp_path / "bad.yaml"
    bad.write_text(zoo.read_text().replace("arch: test_convnext", "arch: test_resnet"))
    assert probe(root, "--models", str(bad), *TARGET) == 2
    assert "models[cnx]: weights file" in capsys.readouterr().err
    assert not (root / "mlflow.db").exists()
    assert probe(root, "--models", str(zoo), *TARGET) == 0
    out = capsys.readouterr().out
    assert "3 models" in out and "grayscale -> RGB (channel repeated)" in out
    assert "Across 3 models, CDNV on 'digits'" in out
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nctune")
    parent = client.search_runs([exp.experiment_id], "tags.`nctune.study` = 'zoo' and "
                                "tags.`nctune.role` = 'study'")[0]
    children = runs_of(client, parent.info.run_id)
    assert sorted(r.data.params["arch"] for r in children) == [
        "test_convnext", "test_efficientnet", "test_resnet"]
    for run in children:
        assert steps(client, run.info.run_id, contract.probe_key(
            "digits", contract.fewshot_key("5w5s", "ncc"))) == [0]
    assert (root / "studies" / "zoo" / "report" / "probe-digits" / "report.html").exists()
