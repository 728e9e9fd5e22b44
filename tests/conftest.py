"""Test configuration: CPU by default, strict promotion, a fresh-key fixture."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Four CPU devices, for the multi-device tests (tests/test_parallel.py); everything else runs on
# the first, as before. Must be set before JAX starts its CPU backend.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile(
    "deterministic",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("deterministic")


def _has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run with JAX_PLATFORMS=cuda on a GPU host)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _dtype_promotion(request):
    """Strict dtype promotion for our code; `standard_promotion` marks tests that run optax,
    whose internals mix Python floats with int32 step counts."""
    mode = "standard" if request.node.get_closest_marker("standard_promotion") else "strict"
    with jax.numpy_dtype_promotion(mode):
        yield


@pytest.fixture
def getkey():
    """Returns a function that hands out a fresh, deterministic PRNG key on each call."""
    counter = iter(range(10**9))

    def _getkey():
        return jr.fold_in(jr.key(0), next(counter))

    return _getkey
