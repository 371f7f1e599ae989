"""Does analysing a study grow no faster than its trials? Load and `analyze` at 16 to 1,000 trials.

Expected run time: ~15-25 minutes on a 2-core machine for the default sizes (most of it writing
the 1,000-trial store); `--sizes 4 --epochs 2` a few seconds (what the test runs).

Claim (goals of issue 21, on 2 cores): a 1,000-trial study (20 epochs, every metric the demo
config reports) is loaded and analysed end to end (`analysis.crosstrial.report.analyze`, report,
figures and tables) in at most 120 s with at most 4 GB peak memory, and the analysis time grows
with exponent log(t1000 / t256) / log(1000 / 256) <= 1.2.

How: for each size a synthetic study is written to a temporary sqlite MLflow store through the
driver's own tracking code (study.run.tracking: the parent run as `log_study_start` makes it, child
runs tagged as study.run.trial_logger tags them, `flat_params`, `finite_metrics` per epoch,
`finish_run`), with one `log_batch` per 1,000 points (the driver logs one per epoch; batching
only makes the set-up faster). The metric names are the demo's (`analysis.contract.trial_metrics`
of the demo preset); their values follow a planted latent quality per trial (CDNV falls and
few-shot accuracy rises with it and over epochs, with noise), the params are drawn from the demo's
search space. Then a fresh subprocess per size (so its peak RSS, `ru_maxrss`, is the analysis
alone) times:
    load_bulk_s      load_study as nctune does it now (one SELECT per 200 runs)
    load_per_key_s   the same study read with one get_metric_history call per (run, key), as
                     before (the same-run baseline; only for sizes <= --baseline-max)
    analyze_s        analyze() end to end (it loads the study again), split into
                     load_s, leaderboard_s, figures_s and rest_s by timing those calls
and the sqlite file's size. A size whose child runs past --timeout or its memory limit
(RLIMIT_AS, --mem-limit-gb) is reported with `error` instead of times. Prints one JSON line, last.

    .venv/bin/python benchmarks/analysis_scaling.py [--sizes 16,256,1000] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STUDY = "scaling"


def demo_keys() -> list[str]:
    """Every metric a demo trial reports (the contract, for the demo preset)."""
    from analysis.contract import trial_metrics
    from study.presets import load_study_config

    groups = trial_metrics(load_study_config("demo").metric_spec())
    return [name for names in groups.values() for name in names]


def demo_space() -> dict[str, dict[str, Any]]:
    """The demo preset's search space, as the driver logs it in space.json."""
    from study.presets import load_study_config

    return {k: v.model_dump() for k, v in load_study_config("demo").space.items()}


def draw_params(space: dict[str, dict[str, Any]], rng: np.random.Generator) -> dict[str, Any]:
    """One config from the space: log_float, float, int and categorical as the demo has them."""
    out: dict[str, Any] = {}
    for key, s in space.items():
        kind = s["type"]
        if kind == "log_float":
            out[key] = float(np.exp(rng.uniform(np.log(s["low"]), np.log(s["high"]))))
        elif kind == "float":
            out[key] = float(rng.uniform(s["low"], s["high"]))
        elif kind == "int":
            out[key] = int(rng.integers(s["low"], s["high"] + 1))
        else:
            out[key] = s["values"][int(rng.integers(len(s["values"])))]
    return out


def metric_value(key: str, progress: float, z: float, rng: np.random.Generator) -> float:
    """A plausible value of `key` at training progress in (0, 1] for latent quality z."""
    noise = float(rng.normal(0.0, 0.1))
    if key == "source/train_loss":
        return 0.1 + 2.2 * (1.0 - progress) * math.exp(-0.2 * z + noise)
    if key.endswith("/acc") or key.endswith("_acc"):  # source, few-shot, per-layer few-shot
        return 1.0 / (1.0 + math.exp(-(0.2 + 1.2 * progress + 0.6 * z + noise)))
    if key.endswith("ci95"):
        return 0.01 * math.exp(noise)
    if key.startswith(("time/", "throughput/")):
        return (1000.0 if key.startswith("throughput") else 1.0) * math.exp(noise)
    if key.startswith("transfer/"):
        return z + progress + noise
    # collapse, bounds and per-layer values: positive, falling with quality and over epochs
    return 0.5 * math.exp(-1.0 * progress - 0.5 * z + noise)


def build(uri: str, n_trials: int, epochs: int, seed: int = 0,
          artifacts: Path | None = None) -> dict[str, Any]:
    """Write the synthetic study through study.run.tracking; returns counts and the write time.
    Artifacts go to `artifacts` (default: next to a sqlite store)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from analysis.crosstrial import store
    from study.run import tracking

    t0 = time.perf_counter()
    tracking.tracking_defaults()
    client = MlflowClient(uri)
    root = artifacts or Path(uri.split(":///", 1)[1]).parent / "art"
    exp = tracking.ensure_experiment(client, "nctune", root)
    space = demo_space()
    searched = sorted(space)
    parent = tracking.log_study_start(
        client, exp, STUDY, "synthetic scaling study",
        {store.TAG_SEARCHED: ",".join(searched), store.TAG_METRIC: "fewshot/5w5s/ncc/acc",
         store.TAG_MODE: "max", store.TAG_SAMPLER: "random"},
        {"search.num_samples": n_trials}, {"space.json": tracking.dump_json(space)})
    keys = demo_keys()
    rng = np.random.default_rng(seed)
    points = 0
    for i in range(1, n_trials + 1):
        config = {**draw_params(space, rng), "epochs": epochs, "seed": i}
        z = float(rng.normal() - 3.0 * (math.log10(config["weight_decay"]) + 3.5) ** 2 / 10)
        tags = {"mlflow.parentRunId": parent, store.TAG_STUDY: STUDY, store.TAG_ROLE: "trial",
                store.TAG_TRIAL_ID: f"trial_{i:05d}", store.TAG_TRIAL_INDEX: str(i),
                store.TAG_STATUS: "running"}
        run = client.create_run(exp, run_name=tracking.run_name(i, config, searched), tags=tags)
        run_id = run.info.run_id
        metrics: list[Metric] = []
        for e in range(1, epochs + 1):
            result = {k: metric_value(k, e / epochs, z, rng) for k in keys}
            metrics.extend(tracking.finite_metrics(result, e))
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000],
                             params=tracking.flat_params(config) if start == 0 else [])
        points += len(metrics)
        tracking.finish_run(client, run_id, "completed")
    client.set_terminated(parent)
    return {"write_s": time.perf_counter() - t0, "keys": len(keys), "points": points}


def measure(uri: str, out: Path, baseline: bool, n_boot: int,
            leaderboard_trials: int = 0) -> dict[str, Any]:
    """Time load (bulk, and per key if `baseline`) and analyze with its breakdown; with
    `leaderboard_trials` > 0 the leaderboard sees only that many usable trials."""
    from mlflow.tracking import MlflowClient

    from analysis.crosstrial import history_read, leaderboard, report
    from analysis.crosstrial.runs import load_study

    MlflowClient(uri).search_experiments()  # the store's one-off set-up, outside the timings
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    study = load_study(STUDY, uri)
    res["load_bulk_s"] = time.perf_counter() - t0
    res["usable"] = len(study.usable)
    print(json.dumps(res), flush=True)  # what a timeout leaves is still reported
    if baseline:
        real = history_read.read_histories

        def per_key(*args: Any, **kwargs: Any) -> Any:
            return real(*args, **{**kwargs, "bulk": False})

        runs_mod = sys.modules["analysis.crosstrial.runs"]
        runs_mod.read_histories = per_key  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        slow = load_study(STUDY, uri)
        res["load_per_key_s"] = time.perf_counter() - t0
        runs_mod.read_histories = real  # type: ignore[attr-defined]
        res["same_frames"] = bool(slow.history.equals(study.history))
        print(json.dumps(res), flush=True)
    del study
    spent: dict[str, float] = {"load_s": 0.0, "leaderboard_s": 0.0, "figures_s": 0.0}
    for attr, slot in (("load_study", "load_s"), ("_leaderboard", "leaderboard_s"),
                       ("_figures", "figures_s")):
        real_fn = getattr(report, attr)

        def timed(*args: Any, _fn: Any = real_fn, _slot: str = slot, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                spent[_slot] += time.perf_counter() - t

        setattr(report, attr, timed)
    if leaderboard_trials:
        table = leaderboard.leaderboard_table
        leaderboard.leaderboard_table = (  # type: ignore[assignment]
            lambda usable, **kw: table(usable.head(leaderboard_trials), **kw))
    t0 = time.perf_counter()
    report.analyze(STUDY, uri, out, n_boot=n_boot, log_to_mlflow=True)
    res["analyze_s"] = time.perf_counter() - t0
    res.update(spent)
    res["rest_s"] = res["analyze_s"] - sum(spent.values())
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return res


def child(args: argparse.Namespace) -> None:
    """One step in its own process: build a store, or measure one."""
    if args.mem_limit_gb:
        limit = int(args.mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.child == "build":
        print(json.dumps(build(args.uri, args.n, args.epochs)))
    else:
        print(json.dumps(measure(args.uri, Path(args.out), args.baseline, args.n_boot,
                                 args.leaderboard_trials)))


def run_child(step: str, uri: str, n: int, args: argparse.Namespace, **extra: Any) -> dict:
    """Run one step in a subprocess; its last stdout line is its JSON (or an error)."""
    cmd = [sys.executable, __file__, "--child", step, "--uri", uri, "--n", str(n),
           "--epochs", str(args.epochs), "--n-boot", str(args.n_boot),
           "--mem-limit-gb", str(args.mem_limit_gb if step == "measure" else 0),
           "--leaderboard-trials", str(args.leaderboard_trials)]
    for k, v in extra.items():
        if v is not False:
            cmd += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              env={**os.environ, "MLFLOW_TRACKING_URI": ""})
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, code = _text(exc.stdout), f"ran past --timeout {args.timeout} s", -9
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    partial = dict(json.loads(lines[-1])) if lines else {}
    if code:
        tail = (stderr.strip().splitlines() or ["no output"])[-1][:300]
        partial["error"] = f"{step} exited {code}: {tail}"
    return partial


def _text(data: bytes | str | None) -> str:
    return data.decode() if isinstance(data, bytes) else (data or "")


def main() -> None:
    """Parse the flags, measure every size, print the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="16,256,1000", help="trial counts, comma-separated")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n-boot", type=int, default=2000, help="analyze()'s bootstrap replicates")
    p.add_argument("--baseline-max", type=int, default=256,
                   help="time the per-key load only up to this many trials (it is slow)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per step and size")
    p.add_argument("--mem-limit-gb", type=float, default=8.0,
                   help="address-space limit of the measuring process (0: none)")
    p.add_argument("--leaderboard-trials", type=int, default=0,
                   help="give the leaderboard only this many usable trials (0: all); measures "
                        "the rest of analyze while the leaderboard is too slow to wait for")
    p.add_argument("--keep", default="", help="keep the stores and reports under this folder")
    p.add_argument("--reuse", action="store_true",
                   help="with --keep: measure the stores already there instead of rebuilding")
    p.add_argument("--child", choices=["build", "measure"], help=argparse.SUPPRESS)
    p.add_argument("--uri", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    tmp = tempfile.TemporaryDirectory(prefix="nctune-scaling-")
    root = Path(args.keep) if args.keep else Path(tmp.name)
    results: dict[str, Any] = {}
    for n in sizes:
        folder = root / f"n{n}"
        folder.mkdir(parents=True, exist_ok=True)
        db = folder / "mlflow.db"
        uri = f"sqlite:///{db}"
        if args.reuse and args.keep and (folder / "build.json").is_file():
            row = json.loads((folder / "build.json").read_text())
        else:
            db.unlink(missing_ok=True)
            row = run_child("build", uri, n, args)
            (folder / "build.json").write_text(json.dumps(row))
        if "error" not in row:
            row["store_mb"] = db.stat().st_size / 2**20
            row.update(run_child("measure", uri, n, args, out=folder / "report",
                                 baseline=n <= args.baseline_max))
        if "load_per_key_s" in row:
            row["load_speedup"] = row["load_per_key_s"] / row["load_bulk_s"]
        results[str(n)] = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        print(f"# {n} trials: {results[str(n)]}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"benchmark": "analysis_scaling", "epochs": args.epochs,
                           "n_boot": args.n_boot, "leaderboard_trials": args.leaderboard_trials,
                           "cpus": os.cpu_count(), "sizes": results}
    big, mid = results.get("1000", {}), results.get("256", {})
    for key in ("analyze_s", "load_bulk_s"):
        if key in big and key in mid:
            out[f"exponent_{key}"] = round(math.log(big[key] / mid[key]) / math.log(1000 / 256), 3)
    if "analyze_s" in big:
        out["goals_met"] = bool(big["analyze_s"] <= 120 and big["peak_rss_gb"] <= 4
                                and out.get("exponent_analyze_s", 0.0) <= 1.2)
    tmp.cleanup()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
