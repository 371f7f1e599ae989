"""The Python half of benchmarks/gpu_proof.sh: the sharing study, and the one JSON line.

Expected run time: `study` about 2-3 minutes on one GPU (two studies of the `gpu-proof` preset:
four trials at 0.25 GPU, then one trial holding the whole GPU), about 3 minutes with `--cpu` on
2 cores; `assemble` under a second.

`study` runs the `gpu-proof` preset twice through the product's own driver
(`study.run.driver.run_study`, a local Ray, MLflow into a sqlite store under the output folder): as
written (four seeds, 0.25 GPU each, all four allowed at once) and as the baseline, one seed
holding the whole GPU. A Tune callback on the driver records every result as it arrives. A
trial's interval runs from its first result's arrival minus that result's `time_this_iter_s`
(when the trial function started) to its last result's arrival. From these it writes
`study.json` in the output folder, after each of the two studies (a time-out in the second
keeps the first's figures):

* `max_concurrent`: the most trial intervals that cover one instant; `all_overlap_s`: how long
  all the study's trials ran together (the intersection of their intervals); `ran_at_once`:
  four trials, and that intersection longer than zero.
* `sum_train_img_s`: the trials' training images/s (`throughput/train_img_s`, median over epochs
  2..), summed: the GPU's total training rate while all ran; `span_img_s`: every image trained,
  over the wall time from the first start to the last end (start-up and evaluation included).
* the shared study's figures over the whole-GPU trial's: `shared_vs_whole_train` and
  `shared_vs_whole_span`.
* `eval_share`: `time/eval_s / (time/train_s + time/eval_s)`, median over epochs 2.. of the
  whole-GPU trial (the first evaluation warms its kernels up): the evaluation's share of an
  epoch with every stage tapped and every estimator on; `eval_over_train` is eval / train.

`assemble` reads what the shell script left in the output folder (per stage: `NAME.status`
holding "rc seconds limit" and `NAME.log`, or `NAME.skip` (not run: an error) or `NAME.off`
(left out by design); pytest's JUnit XML; study.json) and prints one JSON
line with every figure and, per stage, whether it ran and its error, so one stage's failure
loses none of the others' figures.

    python benchmarks/gpu_proof.py study --out DIR [--cpu]
    python benchmarks/gpu_proof.py assemble --out DIR --mode gpu|cpu --install TEXT --wall S
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

PRESET = "gpu-proof"
STAGES = ("install", "eval_breakdown", "pytest_gpu", "throughput", "throughput_compile", "study")
# --cpu: the same code on this CPU at toy sizes; every trial on the CPU, four at once on 2 cores.
CPU_OVERRIDES = [
    "dataset.num_source_classes=8", "dataset.num_target_classes=5",
    "dataset.source_train_per_class=16", "dataset.source_test_per_class=4",
    "dataset.target_per_class=20", "backbone.width=0.125", "training.epochs=2",
    "training.batch_size=32", "training.amp=false", "training.channels_last=false",
    "training.device=cpu", "evaluation.features_per_class=4", "evaluation.episodes=20",
    "evaluation.probe_episodes=5", "resources.gpus_per_trial=0", "resources.cpus_per_trial=0.5",
]


# ---- figures from the results a Tune callback recorded ----------------------------------------

def intervals(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """(start, end) per trial: first arrival minus its time_this_iter_s, last arrival."""
    out: dict[str, tuple[float, float]] = {}
    for trial in sorted({r["trial"] for r in rows}):
        mine = sorted((r for r in rows if r["trial"] == trial), key=lambda r: r["arrived"])
        out[trial] = (mine[0]["arrived"] - float(mine[0]["iter_s"] or 0.0), mine[-1]["arrived"])
    return out


def max_concurrent(spans: dict[str, tuple[float, float]]) -> int:
    """The most intervals covering one instant (an end at the instant another starts: apart)."""
    events = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()],
                    key=lambda ev: (ev[0], ev[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def all_overlap(spans: dict[str, tuple[float, float]]) -> float:
    """Seconds during which every interval was open (0 when some two never met)."""
    if not spans:
        return 0.0
    return max(0.0, min(e for _, e in spans.values()) - max(s for s, _ in spans.values()))


def later(values: list[float]) -> list[float]:
    """Epochs 2.. (the first warms cuDNN and the evaluation's kernels up), or all if one."""
    return values[1:] or values


def trial_figures(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per trial: median training images/s, evaluation share, images trained, epochs, device."""
    out: dict[str, dict[str, Any]] = {}
    for trial in sorted({r["trial"] for r in rows}):
        mine = sorted((r for r in rows if r["trial"] == trial), key=lambda r: r["epoch"])
        evals = [r for r in mine if r.get("eval_s") is not None]
        out[trial] = {
            "epochs": len(mine), "device": mine[-1].get("device"),
            "train_img_s": statistics.median(later([float(r["img_s"]) for r in mine])),
            "images": sum(float(r["img_s"]) * float(r["train_s"]) for r in mine),
            "eval_share": statistics.median(later([
                r["eval_s"] / (r["train_s"] + r["eval_s"]) for r in evals])) if evals else None,
            "eval_over_train": statistics.median(later([
                r["eval_s"] / r["train_s"] for r in evals])) if evals else None,
        }
    return out


def study_figures(rows: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """What one study shows: trials, their overlap, total training rate, evaluation share."""
    spans = intervals(rows)
    per = trial_figures(rows)
    if not per:
        return {"status": status, "trials": 0}
    wall = max(e for _, e in spans.values()) - min(s for s, _ in spans.values())
    shares = [p["eval_share"] for p in per.values() if p["eval_share"] is not None]
    ratios = [p["eval_over_train"] for p in per.values() if p["eval_over_train"] is not None]
    return {
        "status": status, "trials": len(per),
        "devices": sorted({str(p["device"]) for p in per.values()}),
        "max_concurrent": max_concurrent(spans),
        "all_overlap_s": round(all_overlap(spans), 2),
        "trial_s": [round(e - s, 2) for s, e in spans.values()],
        "ran_at_once": len(per) == 4 and all_overlap(spans) > 0,
        "sum_train_img_s": round(sum(p["train_img_s"] for p in per.values())),
        "per_trial_train_img_s": [round(p["train_img_s"]) for p in per.values()],
        "span_s": round(wall, 2),
        "span_img_s": round(sum(p["images"] for p in per.values()) / max(wall, 1e-9)),
        "eval_share": round(statistics.median(shares), 3) if shares else None,
        "eval_over_train": round(statistics.median(ratios), 3) if ratios else None,
    }


def compare(shared: dict[str, Any], whole: dict[str, Any]) -> dict[str, Any]:
    """The four sharing trials' total rates over the whole-GPU trial's."""
    out: dict[str, Any] = {}
    for key, name in (("sum_train_img_s", "shared_vs_whole_train"),
                      ("span_img_s", "shared_vs_whole_span")):
        if shared.get(key) and whole.get(key):
            out[name] = round(shared[key] / whole[key], 3)
    return out


# ---- the study stage ----------------------------------------------------------------------------

def run_studies(out: Path, cpu: bool) -> None:
    """Both studies of the preset, study.json written after each."""
    import ray
    from ray import tune

    from analysis.contract import EVAL_TIME, THROUGHPUT, TRAIN_TIME
    from study.presets import load_study_config
    from study.run.driver import run_study

    class Recorder(tune.Callback):
        """Every result's arrival on the driver, with the few fields the figures need."""

        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            """Record one result."""
            self.rows.append({
                "trial": trial.trial_id, "arrived": time.time(),
                "iter_s": result.get("time_this_iter_s"), "epoch": result.get("epoch", 0),
                "train_s": result.get(TRAIN_TIME), "eval_s": result.get(EVAL_TIME),
                "img_s": result.get(THROUGHPUT), "device": result.get("device")})

    base = [f"storage.root={out / 'runs'}", *(CPU_OVERRIDES if cpu else [])]
    whole = (["resources.cpus_per_trial=" + str(float(os.cpu_count() or 1))] if cpu
             else ["resources.gpus_per_trial=1"])
    variants = {"shared": base, "whole": [*base, *whole, "space.seed.values=[0]"]}
    figures: dict[str, Any] = {"preset": PRESET, "overrides": CPU_OVERRIDES if cpu else []}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # timeout: finally shuts Ray down
    try:
        for name, overrides in variants.items():
            cfg = load_study_config(PRESET, overrides).model_copy(
                update={"name": f"{PRESET}-{name}"})
            recorder = Recorder()
            started = time.time()
            state = run_study(cfg, report=False, callbacks=[recorder])
            figures[name] = {**study_figures(recorder.rows, state.status),
                             "study_wall_s": round(time.time() - started, 1)}
            if name == "whole":
                figures.update(compare(figures["shared"], figures[name]))
            (out / "study.json").write_text(json.dumps(figures))
    finally:
        ray.shutdown()


# ---- assembling the one line ----------------------------------------------------------------

def pytest_counts(junit: Path) -> dict[str, int]:
    """passed / failed / errors / skipped from pytest's JUnit XML (summed over test suites)."""
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites)
             for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def last_json(log: Path) -> dict[str, Any]:
    """The last line of a log that is a JSON object (a benchmark's one line)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError(f"{log.name}: no JSON line")


def stage_record(out: Path, name: str) -> dict[str, Any]:
    """rc, seconds and limit of a stage from NAME.status; its log's tail as the error."""
    status, log = out / f"{name}.status", out / f"{name}.log"
    off = out / f"{name}.off"
    if off.exists():  # left out by design (--cpu without compile): not a failure
        return {"ran": False, "skipped": off.read_text().strip()}
    if not status.exists():
        skip = out / f"{name}.skip"
        return {"ran": False, "error": skip.read_text().strip() if skip.exists()
                else "not run"}
    rc, seconds, limit = (int(x) for x in status.read_text().split()[:3])
    record: dict[str, Any] = {"ran": True, "rc": rc, "s": seconds, "limit_s": limit}
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-6:] if log.exists() else []
        why = f"timed out after {limit} s" if rc in (124, 137) else f"exit status {rc}"
        record["error"] = why + (": " + " | ".join(tail) if tail else "")
    return record


def figure(stages: dict[str, Any], name: str, read: Any) -> Any:
    """read() if the stage ran and it works, else None (with the reason added to the record)."""
    if not stages[name]["ran"]:
        return None
    try:
        return read()
    except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as exc:
        stages[name].setdefault("error", f"no figures: {type(exc).__name__}: {exc}")
        return None


def throughput_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The trainable against the bare loop (images/s ratio), per-width and bf16 figures."""
    keep = ("gpu", "device", "ratio", "ratio_fastest", "trainable_img_s", "bare_img_s",
            "peak_memory_gb_both_models", "amp_speedup", "note")
    out = {k: result[k] for k in keep if k in result}
    if result.get("trainable_img_s") and result.get("bare_img_s"):
        out["img_s_ratio"] = round(result["trainable_img_s"] / result["bare_img_s"], 3)
    widths = result.get("resnet18_small_stem_32px")
    if widths:
        out["resnet18_train_img_s"] = {w: v["train_img_s"] for w, v in widths.items()}
        out["resnet18_infer_img_s"] = {w: v["infer_img_s"] for w, v in widths.items()}
    return out


def gpu_name() -> str | None:
    """The CUDA device's name, None without one."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def assemble(out: Path, mode: str, install: str, wall: float) -> dict[str, Any]:
    """Every stage's record and figures as one dict (the JSON line)."""
    stages = {name: stage_record(out, name) for name in STAGES}
    line: dict[str, Any] = {"benchmark": "gpu_proof", "mode": mode, "gpu": gpu_name(),
                            "install": install}
    line["eval_breakdown"] = figure(stages, "eval_breakdown",
                                    lambda: last_json(out / "eval_breakdown.log"))
    line["pytest_gpu"] = figure(stages, "pytest_gpu",
                                lambda: pytest_counts(out / "pytest_gpu.xml"))
    line["throughput"] = figure(stages, "throughput",
                                lambda: throughput_figures(last_json(out / "throughput.log")))
    line["throughput_compile"] = figure(
        stages, "throughput_compile",
        lambda: throughput_figures(last_json(out / "throughput_compile.log")))
    study = figure(stages, "study", lambda: json.loads((out / "study.json").read_text()))
    line["study"] = study
    tp, shared, whole = line["throughput"] or {}, (study or {}).get("shared", {}), \
        (study or {}).get("whole", {})
    line["headline"] = {
        "trainable_vs_bare_img_s_ratio": tp.get("img_s_ratio"),
        "trainable_vs_bare_img_s_ratio_compiled": (line["throughput_compile"] or {}).get(
            "img_s_ratio"),
        "resnet18_train_img_s": tp.get("resnet18_train_img_s"),
        "bf16_speedup": tp.get("amp_speedup"),
        "eval_share_of_epoch": whole.get("eval_share"),
        "eval_share_breakdown": (line["eval_breakdown"] or {}).get("eval_share"),
        "four_at_0.25_ran_at_once": shared.get("ran_at_once"),
        "four_vs_one_whole_train_img_s": (study or {}).get("shared_vs_whole_train"),
        "four_vs_one_whole_span_img_s": (study or {}).get("shared_vs_whole_span"),
    }
    line["stages"] = stages
    line["ok"] = all("error" not in s and (s["ran"] or "skipped" in s) for s in stages.values())
    line["wall_s"] = round(wall, 1)
    return line


def main() -> None:
    """`study` or `assemble` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("study", help="the sharing and whole-GPU studies -> OUT/study.json")
    st.add_argument("--out", type=Path, required=True)
    st.add_argument("--cpu", action="store_true", help="toy sizes, every trial on the CPU")
    asm = sub.add_parser("assemble", help="print the one JSON line from OUT")
    asm.add_argument("--out", type=Path, required=True)
    asm.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    asm.add_argument("--install", default="")
    asm.add_argument("--wall", type=float, default=0.0)
    args = parser.parse_args()
    if args.command == "study":
        args.out.mkdir(parents=True, exist_ok=True)
        run_studies(args.out.resolve(), args.cpu)
    else:
        print(json.dumps(assemble(args.out, args.mode, args.install, args.wall)))


if __name__ == "__main__":
    main()
