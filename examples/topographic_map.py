"""Topographic map formation: STDP and structural plasticity refine a feed-forward map.

Builds the model of Bamford et al. (2010) as the GeNN structural-plasticity paper runs it
(two 16x16 layers on a torus at scale 1), simulates a few seconds of model time on the
device (``lax.scan``; the host only steps between chunks of one second), and prints how the
receptive fields sharpen: the mean distance of each target neuron's receptive-field centre
from its ideal position, and the mean spread of the receptive fields.

Usage::

    python examples/topographic_map.py                 # 5 s of model time, under a minute
    python examples/topographic_map.py --duration 60   # the paper's run length
    python examples/topographic_map.py --scale 2 --seeds 3

The full experiment with figures and a JSON of metrics is ``jaxplastic topomap``.
"""

import argparse

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from jaxplastic.models import TopographicMap, map_quality, run_topographic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="layers of (16 s)^2 neurons")
    parser.add_argument("--duration", type=float, default=5.0, help="model time (s)")
    parser.add_argument("--seeds", type=int, default=1, help="networks, run together (vmap)")
    args = parser.parse_args()

    model = TopographicMap(scale=args.scale)

    # One network by hand: the state is a NamedTuple of arrays, `run` a pure function.
    state = model.init(jr.key(0))
    rates = model.input_rates(jnp.array([8, 8]))
    print(
        f"{model.n} inputs -> {model.n} targets; input rates {float(rates.min()):.0f} to "
        f"{float(rates.max()):.1f} Hz; {int(state.ff.num_synapses)} feed-forward and "
        f"{int(state.lat.num_synapses)} lateral synapses"
    )

    # The experiment: all seeds in one compiled program, a record every second.
    result = run_topographic(
        model,
        duration_s=args.duration,
        seeds=list(range(args.seeds)),
        record_every_s=1.0,
        progress=lambda info: print(
            f"  t = {info['model_s']:5.1f} s   real-time factor {info['rtf']:.2f}x"
        ),
    )
    print(f"compiled in {result['timing']['compile_s']:.1f} s")
    print(" time (s)   RF distance from ideal   RF spread   ff synapses   lateral synapses")
    for i, t in enumerate(result["times_s"]):
        rows = [records[i] for records in result["records"]]
        print(
            f"  {t:6.1f}   {np.mean([r['rf_distance'] for r in rows]):20.3f}"
            f"   {np.mean([r['rf_spread'] for r in rows]):9.3f}"
            f"   {np.mean([r['ff']['synapses'] for r in rows]):11.0f}"
            f"   {np.mean([r['lat']['synapses'] for r in rows]):16.0f}"
        )
    # Receptive fields of the final network of seed 0.
    final = map_quality(
        result["final"]["post"][0, : model.n], result["final"]["weight"][0, : model.n], model.side
    )
    print(f"seed 0: {final.empty} target neurons without feed-forward input")


if __name__ == "__main__":
    main()
