#!/usr/bin/env bash
# Pack what benchmarks/gpu_proof.sh needs on a GPU machine that reaches no package registry:
# download the wheels in benchmarks/gpu_wheels.txt (CPython 3.12, x86-64 Linux, no dependencies:
# the list names each one), install them into a folder, leave out what neither the study nor the
# tests use (Ray's Java jars, RLlib, Serve, LLM and dashboard web pages; MLflow's web UI), and
# write one xz archive, .whl/site-cp312.tar.xz (about 44 MB; the raw wheels are 112 MB, over the
# 64 MiB a device call may carry). gpu_proof.sh unpacks it into its own folder on PYTHONPATH.
#
#   bash benchmarks/gpu_wheels.sh        # here, with a registry; a few minutes (xz)
#
# Then carry `.whl` (.gitignore keeps it out of git) and run
# `bash benchmarks/gpu_proof.sh` there. Prints the archive's size; exits 1 over 60 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-wheels.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PLATFORMS=()
for p in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 \
         manylinux2014 manylinux1; do PLATFORMS+=(--platform "${p}_x86_64"); done
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}")
mapfile -t PKGS < <(grep -v '^#' benchmarks/gpu_wheels.txt | grep -v '^$')
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$WORK/wheels" "${PKGS[@]}"
"$PY" -m pip install -q --no-deps --no-compile "${TARGET[@]}" --target "$WORK/site" \
  "$WORK"/wheels/*.whl
cd "$WORK/site"
rm -rf bin ray/jars ray/rllib ray/serve ray/llm ray/dashboard/client/build mlflow/server/js/build
find . -name __pycache__ -prune -exec rm -rf {} +
cd - >/dev/null
mkdir -p .whl
tar -C "$WORK/site" -cJf .whl/site-cp312.tar.xz .
size=$(stat -c %s .whl/site-cp312.tar.xz)
echo "gpu_wheels: .whl/site-cp312.tar.xz $((size / 1048576)) MiB from ${#PKGS[@]} wheels"
[ "$size" -le $((60 * 1048576)) ] || { echo "gpu_wheels: over 60 MiB: too big to carry" >&2; exit 1; }
