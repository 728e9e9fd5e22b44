"""Runtime settings of the XLA CPU backend that matter for spiking-network simulation."""

from __future__ import annotations

import os

__all__ = ["single_threaded_cpu"]


def single_threaded_cpu() -> bool:
    """Starts JAX's CPU backend with one intra-op thread, if it has not started yet.

    XLA's CPU client sizes its intra-op thread pool from the CPUs the process may run on when
    the backend starts, and splits every loop fusion of more than a few thousand elements
    across that many threads. A spiking network run step by step executes thousands of tiny
    operations per model millisecond, for which the hand-off between threads costs more than
    it saves: on a 2-core machine the topographic map runs about 1.5x faster with one
    thread. Restricting the process's CPU affinity to one CPU while the backend starts, and
    restoring it at once, gives one intra-op thread without pinning the process (the host
    side, e.g. metrics in numpy, still uses every CPU).

    Call it before any JAX computation (or ``jax.devices()``): once the backend has started
    it has no effect. Several processes can then share the machine's cores.

    Returns:
        True if the backend was started here with one thread; False if it had already
        started, or the platform cannot restrict the affinity (the backend then starts as
        usual).

    Example:
        >>> from jaxplastic._runtime import single_threaded_cpu
        >>> single_threaded_cpu()  # first thing in a script  # doctest: +SKIP
        True
    """
    import jax

    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:  # a JAX without it: start (or find) the backend as below
        backends_are_initialized = None
    if backends_are_initialized is not None and backends_are_initialized():
        return False
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        jax.devices()
    finally:
        os.sched_setaffinity(0, allowed)
    return True
