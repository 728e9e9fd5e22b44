#!/usr/bin/env bash
# The GPU check: one script that runs the GPU tests and the GPU benchmarks on a CUDA machine
# whose image already has jax (with CUDA), optax, equinox, pytest and hypothesis, and has no
# package index.
#
#   bash benchmarks/gpu_check.sh prepare     # here, with the index: our wheel -> .whl/
#   bash benchmarks/gpu_check.sh             # there, with .whl/ copied beside it
#
# `prepare` builds the jaxplastic wheel (Python, and the native CPU kernels' shared library,
# which does not depend on the Python version) into `.whl/` (git-ignored). The check
# installs it without dependencies into a private folder (nothing in the image is replaced),
# runs the `gpu`-marked Pallas tests (the kernels compiled for the GPU) with JAX_PLATFORMS=cuda,
# then the benchmarks, then the propagation, factorized e-prop, structural and connectivity
# tests, and the native CPU kernels' tests (JAX_PLATFORMS=cpu). Every step
# has its own time limit, and all of them share one budget (GPU_CHECK_BUDGET seconds, default
# 540), so one hang does not eat the rest; the script goes on after a failure and exits
# non-zero if any step failed or was skipped. Everything it prints goes to
# $OUT/gpu_check.log (default `gpu_results/`), and each benchmark writes its JSON beside it.
#
# Environment: PYTHON (default python3), GPU_CHECK_PLATFORM (default cuda,cpu; `cpu` dry-runs the
# script itself on a machine without a GPU), GPU_CHECK_QUICK=1 (tiny benchmark grids),
# GPU_CHECK_ONLY="tests_core bench_eprop" (only the steps named).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl

if [[ "${1:-}" == "prepare" ]]; then
  rm -f "$WHEELS"/jaxplastic-*.whl
  "$PY" -m pip wheel --no-deps --wheel-dir "$WHEELS" . && ls -l "$WHEELS"
  exit $?
fi

out="${OUT:-gpu_results}"
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee -a "$log") 2>&1
failed=0
started=$SECONDS
budget=${GPU_CHECK_BUDGET:-540}  # seconds for the whole check; later steps get what is left
step() {  # step NAME SECONDS COMMAND...: run under a time limit; output into the log
  local name=$1 seconds=$2
  shift 2
  if [[ -n "${GPU_CHECK_ONLY:-}" && " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    return
  fi
  local left=$((budget - (SECONDS - started) - 5))
  ((left < seconds)) && seconds=$left
  if ((seconds < 20)); then
    echo "== $name: skipped, the check's budget of $budget s is spent"
    failed=1
    return
  fi
  echo "== $name (limit ${seconds} s, at $((SECONDS - started)) s)"
  timeout "$seconds" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - started)) s"
  [[ $rc -eq 0 ]] || failed=1
}

site=$(mktemp -d)
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/jaxplastic-*.whl \
  || { echo "install failed"; exit 2; }
# The working tree's code first; the installed wheel supplies the package metadata and the
# native kernels' library (git-ignored, so not in the copied tree).
lib=native_kernels/libjaxplastic_structural.so
[[ -f $lib ]] || cp "$site/$lib" "$lib" || echo "no native kernels in the wheel"
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# cpu beside cuda: equinox's runtime errors (eqx.error_if) call back on a CPU device.
export JAX_PLATFORMS=${GPU_CHECK_PLATFORM:-cuda,cpu}
"$PY" -c "import sys, jax, jaxplastic; print(sys.version); print('jax', jax.__version__, \
jax.devices(), 'jaxplastic', jaxplastic.__version__, jaxplastic.__file__)" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null

if [[ "${GPU_CHECK_QUICK:-0}" == 1 ]]; then
  prop=(--sizes 1000 --densities 0.01 --rates 0.1 --batches 1 --repeats 7)
  eprop=(--configs sparse1 --repeats 3 --steps 20 --batch 4)
  rewire=(--n 2000 --fractions 0.01 --repeats 3 --ops remove add update_rows)
  deepr=(--configs sparse1 --modes factorized --repeats 3 --steps 20 --batch 4)
  topo=(--scales 1 --duration 0.2 --seeds 0)
else
  prop=(--pallas)
  eprop=()
  rewire=(--repeats 7)
  deepr=()
  topo=(--scales 1 4 --duration 2 --seeds 4 --ensemble-duration 1)
fi
# A deprecation in a newer JAX than ours is reported, not turned into a failure.
# pytest-benchmark, if the image has it, warns under xdist, and our warnings are errors.
pytest=("$PY" -m pytest -q -p no:cacheprovider -p no:benchmark -W default::DeprecationWarning
  -n 4)

step tests_gpu 90 "${pytest[@]}" -m gpu tests/pallas
step bench_propagation 120 "$PY" benchmarks/propagation.py --no-brainevent "${prop[@]}" \
  --out "$out/propagation.json"
step bench_rewiring 150 "$PY" benchmarks/rewiring.py "${rewire[@]}" --trace "$(mktemp -d)" \
  --out "$out/rewiring.json"
step bench_eprop 90 "$PY" benchmarks/eprop.py --no-online "${eprop[@]}" --out "$out/eprop.json"
step bench_deep_r 90 "$PY" benchmarks/deep_r.py "${deepr[@]}" --out "$out/deep_r.json"
step bench_topomap 90 "$PY" benchmarks/topomap.py --xla-threads all "${topo[@]}" \
  --out "$out/topomap.json"
step tests_core 300 "${pytest[@]}" -m "not slow" \
  tests/test_propagate.py tests/test_eprop_factorized.py tests/test_structural.py \
  tests/test_connectivity.py
# The native CPU kernels (built here, against our jaxlib) under the image's newer jaxlib.
step tests_native_cpu 120 env JAX_PLATFORMS=cpu "${pytest[@]}" tests/test_native_structural.py
echo "== done in $((SECONDS - started)) s, failed=$failed"
exit $failed
