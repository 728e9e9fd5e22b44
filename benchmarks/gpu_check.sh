#!/usr/bin/env bash
# The GPU check: one script that runs the GPU tests and the GPU benchmarks on a CUDA machine
# whose image already has jax (with CUDA), optax and equinox, and has no package index.
#
#   bash benchmarks/gpu_check.sh prepare PYTHON_VERSION   # here, with the index: wheels -> .whl/
#   bash benchmarks/gpu_check.sh                          # there, with .whl/ copied beside it
#
# `prepare` downloads binary wheels of everything else the package and its tests need, for the
# GPU image's Python (e.g. 3.12), into `.whl/` (git-ignored). The check installs from there
# only (no index), runs the tests marked `gpu` and the GPU-relevant test files with
# JAX_PLATFORMS=cuda, then the benchmarks, and writes logs and JSON results to $OUT (default
# `gpu_results/`). Every step has its own time limit so one hang does not eat the rest; the
# script goes on after a failure and exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
DEPS=(
  jaxtyping tensorflow-datasets importlib_resources array_record etils h5py matplotlib tqdm
  scikit-learn scipy mlxtend pillow pytest pytest-xdist hypothesis beartype hatchling
)

if [[ "${1:-}" == "prepare" ]]; then
  pyver="${2:?usage: gpu_check.sh prepare PYTHON_VERSION (e.g. 3.12)}"
  python -m pip download --dest "$WHEELS" --only-binary=:all: --python-version "$pyver" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 "${DEPS[@]}"
  exit $?
fi

out="${OUT:-gpu_results}"
mkdir -p "$out"
failed=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log
  local name=$1 seconds=$2
  shift 2
  echo "== $name"
  timeout "$seconds" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$out/$name.log"
  echo "== $name: exit $rc"
  [[ $rc -eq 0 ]] || failed=1
}

python -c "import jax, sys; print(sys.version); print(jax.__version__, jax.devices())" \
  | tee "$out/devices.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$out/devices.txt" 2>&1

step install 300 python -m pip install --no-index --find-links "$WHEELS" -e '.[test]'

export JAX_PLATFORMS=cuda
step tests_gpu 300 python -m pytest -q -p no:cacheprovider -m gpu tests/pallas
step tests_core 300 python -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/test_propagate.py tests/test_eprop_factorized.py tests/test_structural.py
step bench_propagation 300 python benchmarks/propagation.py --pallas --no-brainevent \
  --out "$out/propagation_gpu.json"
step bench_eprop 300 python benchmarks/eprop.py --no-online --out "$out/eprop_gpu.json"
step bench_rewiring 200 python benchmarks/rewiring.py --out "$out/rewiring_gpu.json"

exit $failed
