#!/usr/bin/env bash
# Runs on a GPU host (H100/H200 via the device tool), in the repository root, in one call:
#   1. unpacks the Debian packages carried in .gpu/debs (scripts/gpu_prepare.sh made them) into
#      /tmp/grpo-deps (never into /),
#   2. builds grpo with its CUDA kernels (GRPO_WITH_CUDA=ON) against the host's python3 torch,
#   3. runs the whole test suite (GPU tests included), the benchmarks and the FP8 parity bench,
#   4. prints a short table last and copies the logs into $OUT (when set).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=/tmp/grpo-deps
BUILD=${GRPO_BUILD_DIR:-/tmp/grpo-build}
OUT=${OUT:-/tmp/grpo-gpu-out}
mkdir -p "$DEPS" "$OUT"
t0=$(date +%s)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
for f in "$ROOT"/.gpu/debs/*.deb; do dpkg -x "$f" "$DEPS"; done
ARCH_LIB="$DEPS/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$ARCH_LIB:${LD_LIBRARY_PATH:-}"
PY=${GRPO_PYTHON:-python3}

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRPO_WITH_CUDA=ON \
  -DGRPO_PYTHON="$PY" -DGRPO_USE_CCACHE=OFF \
  -DCMAKE_PREFIX_PATH="$DEPS/usr" \
  -Dyaml-cpp_DIR="$ARCH_LIB/cmake/yaml-cpp" -Dnlohmann_json_DIR="$DEPS/usr/share/cmake/nlohmann_json" \
  -Dfmt_DIR="$ARCH_LIB/cmake/fmt" -Dspdlog_DIR="$ARCH_LIB/cmake/spdlog" \
  -DGTest_DIR="$ARCH_LIB/cmake/GTest" -Dbenchmark_DIR="$ARCH_LIB/cmake/benchmark" \
  >"$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
t1=$(date +%s)
cmake --build "$BUILD" -j "$(nproc)" >"$OUT/build.log" 2>&1 || { grep -B5 -A20 -m3 "error" "$OUT/build.log"; exit 1; }
t2=$(date +%s)
(cd "$BUILD" && ctest --output-on-failure -j 8 >"$OUT/ctest.log" 2>&1)
tests_rc=$?
t3=$(date +%s)
"$BUILD/bench/grpo_bench" --benchmark_min_time=0.2 >"$OUT/bench.txt" 2>&1
# FP8 training parity on the GPU: cuBLASLt's blockwise FP8 GEMMs against the bf16-autocast run
# (docs/fp8.md "Parity") on the width-256 model; GRPO_GPU_PARITY_SEEDS (default "1"; "" skips it)
# and at most 180 s, so the whole call stays inside one device command.
PARITY_SEEDS=${GRPO_GPU_PARITY_SEEDS-1}
if [ -n "$PARITY_SEEDS" ]; then
  timeout 180 "$BUILD/bench/grpo_fp8_parity" --config "$ROOT/configs/fp8_parity.yaml" --set model.device=cuda \
    --set model.config.fp8.backend=cuda --set "parity.seeds=[$PARITY_SEEDS]" \
    --set run.output_dir=/tmp/grpo-fp8-parity >"$OUT/fp8_parity.txt" 2>&1
  cp /tmp/grpo-fp8-parity/parity.md /tmp/grpo-fp8-parity/parity.json "$OUT/" 2>/dev/null
fi
t4=$(date +%s)

echo
grep -E "tests passed|tests failed|Skipped|Failed" "$OUT/ctest.log" | tail -15
echo
echo "benchmarks (bench/grpo_bench):"
grep -E "^BM_" "$OUT/bench.txt"
echo
echo "FP8 parity on the GPU (bench/fp8_parity.cpp):"
grep -vE "^\[" "$OUT/fp8_parity.txt" 2>/dev/null | tail -20
echo
echo "| step | seconds |"
echo "| --- | --- |"
echo "| configure | $((t1 - t0)) |"
echo "| build | $((t2 - t1)) |"
echo "| tests (rc $tests_rc) | $((t3 - t2)) |"
echo "| benchmarks | $((t4 - t3)) |"
exit $tests_rc
