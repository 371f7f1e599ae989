#!/usr/bin/env bash
# The GPU proof: on a bare GPU machine, install nctune from this working tree, then run
#   1. benchmarks/eval_breakdown.py        (the evaluation's share of an epoch, part by part)
#   2. pytest -m gpu                       (the GPU tests; counts from JUnit XML)
#   3. benchmarks/gpu_throughput.py        (trainable vs bare loop, ResNet-18 img/s, bf16)
#   4. benchmarks/gpu_proof.py study       (preset gpu-proof: 4 trials at 0.25 GPU, then 1 at 1)
#   5. benchmarks/gpu_throughput.py --compile --widths none   (the same loops, torch.compile)
# and print ONE JSON line, last, with every figure and each stage's rc/seconds/error
# (benchmarks/gpu_proof.py assemble). A stage that fails or times out loses only its own figures.
#
#   bash benchmarks/gpu_proof.sh            # on a GPU node: at most 9 minutes (6.5 measured)
#   bash benchmarks/gpu_proof.sh --cpu      # toy sizes on the CPU: the whole path in minutes
#
# Install: nothing if the Python already imports what nctune needs; else what .whl/ holds
# (carried to a machine with no registry; benchmarks/gpu_wheels.sh packs it: *.tar.xz unpacked,
# *.whl installed with pip --target) into one folder put on PYTHONPATH; else
# `pip install -e .[test]` from the registry. The line's "install" says which.
# Environment: PYTHON (default .venv/bin/python if present, else python3), GPU_PROOF_OUT (the
# stage files, the study's runs and the packages; default a new folder under /tmp),
# GPU_PROOF_SAVE (default $OUT if set: where gpu_proof.json and gpu_proof_logs.tgz, the stage
# logs, are copied at the end: two files, not the thousands the stage folder holds),
# GPU_PROOF_BUDGET_S (all stages together, default 540, 1080 with --cpu; each stage also has its
# own limit), GPU_PROOF_CPU_COMPILE=1 (with --cpu, run the torch.compile stage too),
# GPU_PROOF_STAGES (default all: a space-separated subset of eval_breakdown pytest_gpu
# throughput study throughput_compile, for a second try that re-measures only those).
# Exit status 0 once the line is printed: its "ok" says whether every stage ran clean.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
MODE=gpu
for arg in "$@"; do
  case "$arg" in
    --cpu|--tiny) MODE=cpu ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "gpu_proof.sh: unknown argument '$arg'; allowed: --cpu (or --tiny), --help" >&2
       exit 2 ;;
  esac
done
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
if [ -n "${GPU_PROOF_OUT:-}" ]; then DIR=$GPU_PROOF_OUT
else DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-proof.XXXXXX"); fi
SAVE=${GPU_PROOF_SAVE:-${OUT:-}}
mkdir -p "$DIR" && rm -f "$DIR"/*.status "$DIR"/*.skip "$DIR"/*.off "$DIR"/study.json "$DIR"/pytest_gpu.xml
# a shared CPU is slow and its speed varies: --cpu doubles every limit
SCALE=1; [ "$MODE" = cpu ] && SCALE=2
DEADLINE=$((SECONDS + ${GPU_PROOF_BUDGET_S:-$((540 * SCALE))}))
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export NCTUNE_CACHE="${NCTUNE_CACHE:-$DIR/cache}"  # the glyphs, rendered once for all stages
echo "gpu_proof: mode $MODE, python $PY, stage files in $DIR" >&2

# stage NAME LIMIT_S COMMAND...: the command under a time limit (never past the overall
# deadline), its output in NAME.log, "rc seconds limit" in NAME.status.
stage() {
  local name=$1 limit=$(($2 * SCALE)) start rc
  shift 2
  if [ -n "${GPU_PROOF_STAGES:-}" ] && [[ " $GPU_PROOF_STAGES " != *" $name "* ]]; then
    echo "not asked for: GPU_PROOF_STAGES is '$GPU_PROOF_STAGES'" >"$DIR/$name.off"
    return
  fi
  local left=$((DEADLINE - SECONDS))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 15 ]; then
    echo "skipped: the overall budget (GPU_PROOF_BUDGET_S) was spent" >"$DIR/$name.skip"
    return
  fi
  echo "gpu_proof: $name (limit ${limit} s)" >&2
  start=$SECONDS
  timeout -k 15 "$limit" "$@" >"$DIR/$name.log" 2>&1
  rc=$?
  echo "$rc $((SECONDS - start)) $limit" >"$DIR/$name.status"
  echo "gpu_proof: $name rc $rc in $((SECONDS - start)) s" >&2
}

NEEDS="import ray, optuna, mlflow, timm, pydantic, yaml, scipy, sklearn, pytest, hypothesis"
install() {
  local tars wheels
  tars=$(compgen -G ".whl/*.tar.xz" || true); wheels=$(compgen -G ".whl/*.whl" || true)
  if "$PY" -c "$NEEDS" 2>/dev/null; then
    INSTALL="nothing: $PY already imports every package nctune needs"
  elif [ -n "$tars$wheels" ]; then
    INSTALL="from .whl/ into $DIR/site (no registry):$(for f in $tars $wheels; do
      printf ' %s' "${f#.whl/}"; done)"
    mkdir -p "$DIR/site"
    for f in $tars; do tar -C "$DIR/site" -xJf "$f" || return; done
    if [ -n "$wheels" ]; then
      # shellcheck disable=SC2086
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$DIR/site" $wheels || return
    fi
    export PYTHONPATH="$ROOT:$DIR/site${PYTHONPATH#"$ROOT"}"
  else
    INSTALL="pip install -e .[test] from the registry"
    "$PY" -m pip install -q -e ".[test]" || return
  fi
  "$PY" -c "$NEEDS; import study, trainables, analysis"
}
start=$SECONDS
install >"$DIR/install.log" 2>&1
echo "$? $((SECONDS - start)) 0" >"$DIR/install.status"
echo "gpu_proof: install: $INSTALL" >&2
export PATH="$DIR/site/bin:$PATH"

if [ "$MODE" = gpu ]; then
  TP=(--epochs 6); CTP=(--epochs 4); STUDY=(); EB=(--repeats 3)
else
  TP=(--device cpu --quick --widths 0.25,0.5,1); CTP=(--device cpu --quick); STUDY=(--cpu)
  EB=(--cpu --repeats 2)
fi
stage eval_breakdown 90 "$PY" benchmarks/eval_breakdown.py "${EB[@]}"
# only the modules that hold GPU tests (collecting the whole suite takes a while); -v names
# each test as it ends, so a stage cut short still says which ran, which failed, which hung
mapfile -t GPU_TESTS < <(grep -rl "pytest.mark.gpu" tests --include='test_*.py' | sort)
stage pytest_gpu 200 "$PY" -m pytest -m gpu -v --tb=short -p no:cacheprovider --timeout 150 \
  --durations=0 --junitxml="$DIR/pytest_gpu.xml" "${GPU_TESTS[@]}"
stage throughput 90 "$PY" benchmarks/gpu_throughput.py "${TP[@]}"
# the sharing study before torch.compile: it matters more, and compilation may take long
stage study 240 "$PY" benchmarks/gpu_proof.py study --out "$DIR" "${STUDY[@]}"
if [ "$MODE" = gpu ] || [ -n "${GPU_PROOF_CPU_COMPILE:-}" ]; then
  stage throughput_compile 150 "$PY" benchmarks/gpu_throughput.py --compile --widths none \
    "${CTP[@]}"
else
  echo "torch.compile on the CPU spends minutes building C++ (set" \
    "GPU_PROOF_CPU_COMPILE=1 to run it)" >"$DIR/throughput_compile.off"
fi

"$PY" benchmarks/gpu_proof.py assemble --out "$DIR" --mode "$MODE" --install "$INSTALL" \
  --wall "$SECONDS" >"$DIR/gpu_proof.json"
rc=$?
if [ -n "$SAVE" ]; then
  mkdir -p "$SAVE" && cp "$DIR/gpu_proof.json" "$SAVE/" &&
    (cd "$DIR" && tar -czf "$SAVE/gpu_proof_logs.tgz" --ignore-failed-read ./*.log ./*.status \
      ./*.skip ./*.off ./*.xml ./study.json 2>/dev/null)
  echo "gpu_proof: saved gpu_proof.json and gpu_proof_logs.tgz in $SAVE" >&2
fi
cat "$DIR/gpu_proof.json"
exit $rc
