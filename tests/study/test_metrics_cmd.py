"""`nctune metrics`: the contract's list, and exactly what a real demo trial logs to MLflow."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from analysis.contract import descriptor, trial_metrics
from study.cli import main
from study.presets import load_study_config

# The demo as it is (same backbone, evaluation and search metric), shrunk to one short trial:
# the names a trial reports do not depend on how much data or how many epochs it has.
SMALL_DEMO = ["search.num_samples=1", "search.max_concurrent=1", "space.epochs=1",
              "space.width=0.25", "dataset.num_source_classes=10",
              "dataset.num_target_classes=10", "dataset.source_train_per_class=6",
              "dataset.source_test_per_class=5", "evaluation.episodes=20",
              "evaluation.probe_episodes=5"]


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    capsys.readouterr()
    assert main(["metrics", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_plain_list_is_the_contracts_list_once_each(capsys) -> None:
    names = printed(capsys, "demo", "--plain")
    cfg = load_study_config("demo")
    assert len(names) == len(set(names))
    assert set(names) == cfg.metric_names()
    assert cfg.search.metric in names


def test_grouped_list_marks_the_search_metric_and_follows_overrides(capsys) -> None:
    lines = printed(capsys, "demo", "--set", "evaluation.shapes=[5w1s,10w5s]",
                    "--set", "evaluation.classifiers=[ncc]", "--set",
                    "search.metric=fewshot/10w5s/ncc/acc")
    assert "fewshot/10w5s/ncc/acc  *" in lines
    assert "bound/10w5s" in lines and "bound/5w5s" not in lines
    assert not any("/logreg/" in line for line in lines)
    headings = [line for line in lines if line.startswith("# ")]
    groups = trial_metrics(load_study_config("demo", ["evaluation.classifiers=[ncc]"])
                           .metric_spec())
    assert [h.split(":")[0][2:] for h in headings] == list(groups)


def test_describe_says_what_each_name_is_and_which_way_is_better(capsys) -> None:
    lines = printed(capsys, "demo", "--describe")
    by_name = {line.split("  ")[0]: line for line in lines if "/" in line.split(" ")[0]}
    assert "target CDNV; lower is better; Galanti" in by_name["cdnv/target"]
    assert "5-way 5-shot NCC accuracy; higher is better" in by_name["fewshot/5w5s/ncc/acc"]
    assert "layer3 target CDNV; lower is better" in by_name["layer/layer3/cdnv/target"]
    assert "NCTI S_vc (target); lower is better" in by_name["transfer/ncti_vc/target"]
    assert all("  — " in line for line in by_name.values())


def test_bad_input_is_one_line_and_exit_2(capsys) -> None:
    capsys.readouterr()
    assert main(["metrics", "demo", "--set", "evaluation.shapes=[5w0s]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evaluation.shapes" in err[0] and "5w0s" in err[0]
    assert main(["metrics", "no-such-preset"]) == 2


@pytest.mark.slow
def test_a_real_demo_trial_logs_exactly_the_printed_names(tmp_path, capsys, local_ray) -> None:
    overrides = [arg for o in SMALL_DEMO for arg in ("--set", o)]
    names = set(printed(capsys, "demo", "--plain", *overrides))
    root = ["--set", f"storage.root={tmp_path}"]
    assert main(["run", "demo", "--no-report", *overrides, *root]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nctune")
    (child,) = client.search_runs([exp.experiment_id], "tags.`nctune.role` = 'trial'")
    assert child.data.tags["nctune.status"] == "completed"
    logged = set(child.data.metrics)
    assert logged == names, {"missing": sorted(names - logged), "extra": sorted(logged - names)}
    assert not [n for n in logged if descriptor(n) is None], "every logged key has a descriptor"
