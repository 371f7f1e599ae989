"""benchmarks/gpu_proof.sh and its Python half: the script parses, refuses bad arguments, and the
one JSON line is assembled right from what the stages leave, a failed stage losing only its own
figures. (The whole script runs with --cpu in minutes; the README says how; CI runs these.)"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_proof.sh"
_spec = importlib.util.spec_from_file_location("gpu_proof", ROOT / "benchmarks" / "gpu_proof.py")
assert _spec is not None and _spec.loader is not None
gp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gp)


def test_the_script_parses_and_is_executable():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_an_unknown_argument_is_one_clear_error_before_anything_runs(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT), "--gpus"], capture_output=True, text=True,
                         env={**os.environ, "GPU_PROOF_OUT": str(tmp_path)}, timeout=30)
    assert out.returncode == 2
    assert "unknown argument '--gpus'" in out.stderr and "--cpu" in out.stderr
    assert not list(tmp_path.iterdir())


def rows(spans: dict[str, tuple[float, float]], epochs: int = 3) -> list[dict]:
    """Results of trials that start at s, end at e, epochs equally spaced; epoch k trains
    100*k images/s for 2 s and evaluates 0.5*k s (share k*0.5/(2+k*0.5))."""
    out = []
    for trial, (s, e) in spans.items():
        step = (e - s) / epochs
        for k in range(1, epochs + 1):
            out.append({"trial": trial, "arrived": s + k * step, "iter_s": step, "epoch": k,
                        "train_s": 2.0, "eval_s": 0.5 * k, "img_s": 100.0 * k,
                        "device": "cuda"})
    return out


def test_overlap_of_known_intervals():
    spans = {"a": (0.0, 10.0), "b": (2.0, 12.0), "c": (5.0, 15.0), "d": (9.0, 20.0)}
    got = gp.intervals(rows(spans))
    assert got.keys() == spans.keys()
    for trial, (start, end) in spans.items():
        assert got[trial] == (pytest.approx(start), pytest.approx(end))
    assert gp.max_concurrent(spans) == 4
    assert gp.all_overlap(spans) == pytest.approx(1.0)
    # one after another, touching: never two at once, no common time
    serial = {"a": (0.0, 1.0), "b": (1.0, 2.0), "c": (2.0, 3.0), "d": (3.0, 4.0)}
    assert gp.max_concurrent(serial) == 1
    assert gp.all_overlap(serial) == 0.0
    assert gp.max_concurrent({"a": (0.0, 5.0), "b": (1.0, 2.0), "c": (3.0, 4.0)}) == 2


def test_study_figures_of_known_results():
    spans = {"a": (0.0, 10.0), "b": (1.0, 11.0), "c": (2.0, 12.0), "d": (3.0, 13.0)}
    fig = gp.study_figures(rows(spans), "completed")
    assert fig["trials"] == 4 and fig["max_concurrent"] == 4 and fig["ran_at_once"]
    assert fig["all_overlap_s"] == pytest.approx(7.0)
    assert fig["sum_train_img_s"] == 4 * 250  # median of epochs 2, 3: (200 + 300) / 2
    assert fig["span_s"] == pytest.approx(13.0)
    assert fig["span_img_s"] == round(4 * (200 + 400 + 600) / 13.0)
    # epochs 2 and 3: 1/(2+1) and 1.5/(2+1.5); eval/train 0.5 and 0.75
    assert fig["eval_share"] == round((1 / 3 + 1.5 / 3.5) / 2, 3)
    assert fig["eval_over_train"] == 0.625
    whole = gp.study_figures(rows({"w": (0.0, 4.0)}), "completed")
    assert not whole["ran_at_once"] and whole["sum_train_img_s"] == 250
    assert gp.compare(fig, whole) == {"shared_vs_whole_train": 4.0,
                                      "shared_vs_whole_span": round(
                                          fig["span_img_s"] / whole["span_img_s"], 3)}
    serial = gp.study_figures(rows({t: (i, i + 1.0) for i, t in enumerate("abcd")}), "done")
    assert serial["max_concurrent"] == 1 and not serial["ran_at_once"]


def test_pytest_counts_from_a_real_junit_file(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\ndef test_a():\n    pass\n\ndef test_b():\n    pass\n\n"
        "def test_c():\n    assert False\n\n@pytest.mark.skip\ndef test_d():\n    pass\n")
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", "test_sample.py"], cwd=tmp_path,
                   capture_output=True, timeout=120)
    assert gp.pytest_counts(junit) == {"passed": 2, "failed": 1, "errors": 0, "skipped": 1}


THROUGHPUT = {"benchmark": "gpu_throughput", "gpu": "NVIDIA H200", "device": "cuda",
              "ratio": 1.02, "trainable_img_s": 9800, "bare_img_s": 10000,
              "resnet18_small_stem_32px": {
                  "w1": {"train_img_s": 10000, "infer_img_s": 40000},
                  "w2": {"train_img_s": 4000, "infer_img_s": 15000}},
              "amp_speedup": 2.5}


def write_stage(folder: Path, name: str, rc: int, seconds: int, limit: int, log: str) -> None:
    (folder / f"{name}.status").write_text(f"{rc} {seconds} {limit}\n")
    (folder / f"{name}.log").write_text(log)


def test_assemble_keeps_every_stage_figures_and_names_each_failure(tmp_path):
    write_stage(tmp_path, "install", 0, 3, 0, "")
    write_stage(tmp_path, "pytest_gpu", 1, 40, 120, "1 failed, 8 passed\n")
    (tmp_path / "pytest_gpu.xml").write_text(
        '<testsuites><testsuite tests="9" failures="1" errors="0" skipped="0"/></testsuites>')
    write_stage(tmp_path, "throughput", 0, 50, 90, "warming up\n" + json.dumps(THROUGHPUT))
    write_stage(tmp_path, "throughput_compile", 124, 150, 150, "compiling\nstill compiling\n")
    (tmp_path / "study.skip").write_text("skipped: the overall budget was spent")
    line = gp.assemble(tmp_path, "gpu", "wheels: 12 from .whl/", 300.0)
    assert json.loads(json.dumps(line)) == line  # one JSON line
    assert line["pytest_gpu"] == {"passed": 8, "failed": 1, "errors": 0, "skipped": 0}
    assert line["stages"]["pytest_gpu"]["error"].startswith("exit status 1: 1 failed")
    assert line["throughput"]["img_s_ratio"] == 0.98
    assert line["headline"]["resnet18_train_img_s"] == {"w1": 10000, "w2": 4000}
    assert line["headline"]["bf16_speedup"] == 2.5
    assert line["stages"]["throughput"] == {"ran": True, "rc": 0, "s": 50, "limit_s": 90}
    compile_ = line["stages"]["throughput_compile"]
    assert compile_["error"] == "timed out after 150 s: compiling | still compiling"
    assert line["throughput_compile"] is None
    assert line["stages"]["study"] == {"ran": False,
                                       "error": "skipped: the overall budget was spent"}
    assert line["study"] is None and line["headline"]["four_at_0.25_ran_at_once"] is None
    assert line["ok"] is False and line["wall_s"] == 300.0


def test_a_stage_that_exits_0_without_its_json_line_is_an_error(tmp_path):
    write_stage(tmp_path, "throughput", 0, 5, 90, "Traceback ... no line\n")
    line = gp.assemble(tmp_path, "cpu", "nothing", 5.0)
    assert line["throughput"] is None
    assert "no JSON line" in line["stages"]["throughput"]["error"]
    assert line["stages"]["install"] == {"ran": False, "error": "not run"}


def test_a_stage_left_out_by_design_is_no_failure(tmp_path):
    for name in ("install", "pytest_gpu", "study"):
        write_stage(tmp_path, name, 0, 1, 10, "")
    (tmp_path / "pytest_gpu.xml").write_text('<testsuite tests="2" skipped="2"/>')
    (tmp_path / "study.json").write_text(json.dumps({"shared": {"ran_at_once": True}}))
    write_stage(tmp_path, "throughput", 0, 5, 90, json.dumps(THROUGHPUT))
    write_stage(tmp_path, "eval_breakdown", 0, 3, 90,
                json.dumps({"benchmark": "eval_breakdown", "eval_share": 0.25}))
    (tmp_path / "throughput_compile.off").write_text("torch.compile on the CPU: off")
    line = gp.assemble(tmp_path, "cpu", "nothing", 5.0)
    assert line["headline"]["eval_share_breakdown"] == 0.25
    assert line["stages"]["throughput_compile"] == {"ran": False,
                                                    "skipped": "torch.compile on the CPU: off"}
    assert line["pytest_gpu"] == {"passed": 0, "failed": 0, "errors": 0, "skipped": 2}
    assert line["headline"]["four_at_0.25_ran_at_once"] is True
    assert line["ok"] is True
    (tmp_path / "study.status").write_text("1 3 240")
    assert gp.assemble(tmp_path, "cpu", "nothing", 5.0)["ok"] is False


def test_eval_breakdown_times_every_part_on_the_cpu():
    """benchmarks/eval_breakdown.py at toy sizes: the parts are the evaluation's, their sum is
    near the whole, and the estimators' CPU baseline is measured in the same run."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_breakdown.py"), "--cpu",
                          "--repeats", "1"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["benchmark"] == "eval_breakdown" and line["device"] == "cpu"
    parts = line["parts_s"]
    assert {"extract/target", "collapse/source_train", "fewshot/5w5s/logreg", "transfer/logme",
            "bound_cantelli", "layers/statistics"} <= set(parts)
    assert 0.3 < line["parts_over_whole"] < 3
    assert 0 < line["eval_share"] < 1
    assert line["estimators"]["on_device"] > 0 and line["estimators"]["on_cpu"] > 0
