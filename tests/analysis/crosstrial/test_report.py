"""crosstrial.report and `nctune analyze`: the report end to end on synthetic MLflow stores."""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from analysis.crosstrial.report import Report, analyze, write_report
from analysis.errors import InputError
from study.cli import main
from tests.analysis.conftest import FakeTrial, loguniform, synth_trial, write_study

HEADLINE = "analysis/spearman/cdnv_target__fewshot_5w5s_ncc"
FIGURES = ["transfer_vs_cdnv", "cdnv_over_epochs", "effects", "bound_vs_error", "leaderboard",
           "importances"]


def demo_trials(n: int = 16, seed: int = 0) -> list[FakeTrial]:
    """weight_decay lowers target CDNV, accuracy follows log CDNV; label smoothing is a
    3-value grid; one trial failed, one diverged, one has a gap."""
    rng = np.random.default_rng(seed)
    wd = loguniform(rng, 1e-5, 1e-2, n)
    ls = np.resize([0.0, 0.1, 0.2], n)
    cdnv = 0.02 * (1e-2 / wd) ** 0.35 * np.exp(rng.normal(0, 0.2, n))
    acc = 0.9 - 0.1 * np.log10(cdnv / 0.02) + rng.normal(0, 0.02, n)
    trials = [synth_trial({"weight_decay": float(wd[i]), "label_smoothing": float(ls[i])},
                          cdnv_final=float(cdnv[i]), acc_final=float(acc[i]),
                          src_acc_final=float(rng.uniform(0.6, 0.9)), epochs=4, rng=rng)
              for i in range(n)]
    trials[1] = FakeTrial(trials[1].params, {"source/train_loss": {1: 2.0}}, status="failed",
                          error="RuntimeError: out of memory")
    trials[2].status = "diverged"
    for hist in trials[3].metrics.values():
        hist.pop(2, None)
    return trials


@pytest.fixture(scope="module")
def demo(empty_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Report]:
    folder = tmp_path_factory.mktemp("report")
    shutil.copy(empty_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    write_study(uri, "demo", demo_trials(), searched=["weight_decay", "label_smoothing"])
    return uri, analyze("demo", uri, folder / "out", n_boot=500)


def test_report_files_figures_and_tables(demo: tuple[str, Report]) -> None:
    _, rep = demo
    out = rep.path.parent
    assert rep.path.name == "report.html" and rep.n_usable == 14 and rep.n_trials == 16
    for stem in FIGURES:
        png = out / "figures" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "figures" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    html = rep.path.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(FIGURES)  # self-contained
    assert base64.b64decode(embedded[0])[:4] == b"\x89PNG"
    for name in ("correlations", "correlations_epochs", "effects", "per_value", "importances",
                 "bound", "trials", "generalization", "within_trial"):
        assert (out / f"{name}.csv").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == rep.verdict and summary["n_usable"] == 14


def test_verdict_states_the_relation_with_its_interval(demo: tuple[str, Report]) -> None:
    _, rep = demo
    c = rep.tables["correlations"]
    row = c[(c["collapse"] == "cdnv/target") & (c["transfer"] == "fewshot/5w5s/ncc/acc")
            & (c["method"] == "spearman")].iloc[0]
    assert row.ci_high < 0
    head = rep.verdict[0]
    assert head.startswith("Across 14 trials, lower target CDNV went with higher 5-way 5-shot "
                           "NCC accuracy: Spearman −")
    assert f"{row.estimate:.2f}".replace("-", "−") in head
    assert f"[{row.ci_low:.2f}, {row.ci_high:.2f}]".replace("-", "−") in head
    assert "(95% intervals, Fisher z over trials)." in head
    # the next sentence is the decision table's: the partial with its interval, or why not
    assert re.search(r"\(partial −?\d\.\d\d \[|No partial correlation: ", rep.verdict[1])
    assert rep.verdict[2].startswith("Power: with 14 trials")
    assert rep.answer == 3  # what `nctune run` prints: the headline never without its partial
    text = " ".join(rep.verdict)
    assert "modest sample" in text  # 14 trials
    assert "2 of 16 trials were left out (1 failed, 1 diverged)" in text
    assert "nan" not in text.lower()
    html = rep.path.read_text()
    assert "RuntimeError: out of memory" in html and "missing epochs 2" in html


def test_headline_numbers_and_report_are_logged_to_the_parent_run(
        demo: tuple[str, Report]) -> None:
    from mlflow import MlflowClient

    uri, rep = demo
    client = MlflowClient(uri)
    parent = client.search_runs(
        [client.get_experiment_by_name("nctune").experiment_id],
        "tags.`nctune.role` = 'study'")[0]
    assert parent.data.metrics[HEADLINE] == pytest.approx(rep.metrics[HEADLINE])
    assert parent.data.metrics["analysis/n_trials"] == 14
    assert HEADLINE.replace("spearman/", "partial_spearman/") in parent.data.metrics
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "analysis")}
    assert {"analysis/report.html", "analysis/figures", "analysis/summary.json"} <= files
    assert rep.log_error == ""


def test_markdown_report(demo: tuple[str, Report], tmp_path: Path) -> None:
    uri, _ = demo
    path = write_report("demo", uri, tmp_path / "md", fmt="md")
    md = path.read_text()
    assert path.name == "report.md" and md.startswith("# Does neural collapse predict")
    assert "![" in md and "(figures/transfer_vs_cdnv.png)" in md
    assert "| collapse | transfer | Spearman |" in md
    for block in re.findall(r"((?:^\|.*\|$\n?)+)", md, flags=re.M):  # every table is rectangular
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in block.strip().splitlines()}
        assert len(widths) == 1, block[:300]
    assert (tmp_path / "md" / "figures" / "transfer_vs_cdnv.png").exists()


def test_cli_writes_the_report_to_the_study_folder_by_default(
        demo: tuple[str, Report], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    uri, _ = demo
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["analyze", "demo", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "Across 14 trials" in out
    assert (tmp_path / "nctune-runs" / "studies" / "demo" / "report" / "report.md").exists()


def test_too_few_trials_writes_a_report_that_says_why_and_exits_2(
        new_store: Callable[[], str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    uri = new_store()
    trials = [synth_trial({"weight_decay": w}, cdnv_final=0.1 * (i + 1), acc_final=0.8,
                          epochs=2) for i, w in enumerate((1e-4, 1e-3, 1e-2))]
    trials[2] = FakeTrial(trials[2].params, {}, status="failed", error="boom")
    write_study(uri, "tiny", trials, searched=["weight_decay"])
    code = main(["analyze", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "only 2 of 3 trials are usable" in err and "at least 3" in err
    html = (tmp_path / "r" / "report.html").read_text()
    verdict = html[html.index('id="verdict"'):html.index("</ul></div>")]
    assert "No correlation is reported: only 2 of 3 trials are usable" in verdict
    assert "nan" not in verdict.lower()


def test_four_trials_give_no_conclusion(new_store: Callable[[], str], tmp_path: Path) -> None:
    uri = new_store()
    trials = [synth_trial({"weight_decay": 10.0 ** -(i + 2)}, cdnv_final=0.1 * (i + 1),
                          acc_final=0.9 - 0.05 * i, src_acc_final=0.6 + 0.05 * i, epochs=3)
              for i in range(4)]
    write_study(uri, "four", trials, searched=["weight_decay"])
    rep = analyze("four", uri, tmp_path, n_boot=200, log_to_mlflow=False)
    assert rep.too_few == ""
    assert rep.verdict[0] == ("Across only 4 trials, target CDNV and 5-way 5-shot NCC accuracy "
                              "had Spearman −1.00 (p = 0.083), too few trials for an interval or "
                              "a conclusion.")
    assert "went with" not in " ".join(rep.verdict)
    assert any(line.startswith("With only 4 trials, importances are rough.")
               for line in rep.verdict)


@pytest.mark.parametrize("case", ["unknown study", "missing store", "unreachable server",
                                  "bad experiment"])
@pytest.mark.timeout(60)
def test_bad_input_is_one_clear_error_and_exit_2(
        case: str, demo: tuple[str, Report], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    uri, _ = demo
    args, message = {
        "unknown study": (["nope", "--tracking-uri", uri], "no study named 'nope'.*demo"),
        "missing store": (["demo", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"],
                          "no MLflow database"),
        "unreachable server": (["demo", "--tracking-uri", "http://127.0.0.1:9"],
                               "no MLflow server answers"),
        "bad experiment": (["demo", "--tracking-uri", uri, "--experiment", "x"],
                           "experiment 'x' not found"),
    }[case]
    assert main(["analyze", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nctune: error: ") and re.search(message, err)
    assert len(err.strip().splitlines()) == 1


def test_format_is_checked(demo: tuple[str, Report], tmp_path: Path) -> None:
    uri, _ = demo
    with pytest.raises(InputError, match=r"format: 'pdf' is not one of \['html', 'md'\]"):
        analyze("demo", uri, tmp_path, fmt="pdf")
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "demo", "--format", "pdf"])
    assert exc.value.code == 2
