#!/usr/bin/env bash
# The GPU proof: on a bare GPU machine, install nctune from this working tree, then run
#   1. pytest -m gpu                       (the GPU tests; counts from JUnit XML)
#   2. benchmarks/gpu_throughput.py        (trainable vs bare loop, ResNet-18 img/s, bf16)
#   3. benchmarks/gpu_proof.py study       (preset gpu-proof: 4 trials at 0.25 GPU, then 1 at 1)
#   4. benchmarks/gpu_throughput.py --compile --widths none   (the same loops, torch.compile)
# and print ONE JSON line, last, with every figure and each stage's rc/seconds/error
# (benchmarks/gpu_proof.py assemble). A stage that fails or times out loses only its own figures.
#
#   bash benchmarks/gpu_proof.sh            # on a GPU node: about 5-6 minutes, at most ~8
#   bash benchmarks/gpu_proof.sh --cpu      # toy sizes on the CPU: the whole path in minutes
#
# Install: wheels in .whl/ (carried to a machine with no registry) go to a --target folder put on
# PYTHONPATH; else, if the Python already imports what nctune needs, nothing is installed; else
# `pip install -e .[test]` from the registry. The line's "install" says which.
# Environment: PYTHON (default .venv/bin/python if present, else python3), GPU_PROOF_OUT (the
# stage files; default $OUT/gpu-proof when $OUT is set, else a new temporary folder),
# GPU_PROOF_BUDGET_S (all stages together, default 480, 960 with --cpu; each stage also has its
# own limit), GPU_PROOF_CPU_COMPILE=1 (with --cpu, run the torch.compile stage too).
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
MODE=gpu
for arg in "$@"; do
  case "$arg" in
    --cpu|--tiny) MODE=cpu ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_proof.sh: unknown argument '$arg'; allowed: --cpu (or --tiny), --help" >&2
       exit 2 ;;
  esac
done
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
if [ -n "${GPU_PROOF_OUT:-}" ]; then DIR=$GPU_PROOF_OUT
elif [ -n "${OUT:-}" ]; then DIR=$OUT/gpu-proof
else DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-proof.XXXXXX"); fi
mkdir -p "$DIR" && rm -f "$DIR"/*.status "$DIR"/*.skip "$DIR"/*.off "$DIR"/study.json "$DIR"/pytest_gpu.xml
# a shared CPU is slow and its speed varies: --cpu doubles every limit
SCALE=1; [ "$MODE" = cpu ] && SCALE=2
DEADLINE=$((SECONDS + ${GPU_PROOF_BUDGET_S:-$((480 * SCALE))}))
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export NCTUNE_CACHE="${NCTUNE_CACHE:-$DIR/cache}"  # the glyphs, rendered once for all stages
echo "gpu_proof: mode $MODE, python $PY, stage files in $DIR" >&2

# stage NAME LIMIT_S COMMAND...: the command under a time limit (never past the overall
# deadline), its output in NAME.log, "rc seconds limit" in NAME.status.
stage() {
  local name=$1 limit=$(($2 * SCALE)) start rc
  shift 2
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
  if compgen -G ".whl/*.whl" >/dev/null; then
    INSTALL="wheels: $(ls .whl/*.whl | wc -l) from .whl/ into $DIR/site (no registry)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$DIR/site" .whl/*.whl || return
    export PYTHONPATH="$ROOT:$DIR/site${PYTHONPATH#"$ROOT"}"
  elif "$PY" -c "$NEEDS" 2>/dev/null; then
    INSTALL="nothing: $PY already imports every package nctune needs"
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
  TP=(--epochs 6); CTP=(--epochs 4); STUDY=()
else
  TP=(--device cpu --quick --widths 0.25,0.5,1); CTP=(--device cpu --quick); STUDY=(--cpu)
fi
stage pytest_gpu 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$DIR/pytest_gpu.xml"
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
  --wall "$SECONDS"
