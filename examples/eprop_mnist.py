"""Train a sparse recurrent spiking classifier with online e-prop on offline MNIST digits.

Runs on a CPU in well under a minute with the defaults (a 784-128-10 LIF network at 10 %
density, 1,000 latency-coded training digits, 3 epochs); the flags scale it up towards the
paper's setting (512 hidden neurons, 1 % density, the full dataset, 100 steps).

    python examples/eprop_mnist.py
    python examples/eprop_mnist.py --hidden 512 --p-in 0.01 --p-rec 0.01 --train-size 4000 \
        --num-steps 100 --epochs 10
    python examples/eprop_mnist.py --dense          # the dense twin, for comparison
"""

import argparse
import time

import equinox as eqx
import jax
import numpy as np
import optax

from jaxplastic.datasets import load
from jaxplastic.learning import eprop, train_step
from jaxplastic.models import accuracy, recurrent_classifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128, help="hidden neurons")
    parser.add_argument("--neuron", choices=["lif", "alif"], default="lif")
    parser.add_argument("--p-in", type=float, default=0.1, help="input connection probability")
    parser.add_argument("--p-rec", type=float, default=0.1, help="recurrent probability")
    parser.add_argument("--weight-gain", type=float, default=2.0, help="initial weight scale")
    parser.add_argument("--dense", action="store_true", help="train the dense twin instead")
    parser.add_argument("--train-size", type=int, default=1000, help="training digits (<= 4000)")
    parser.add_argument("--num-steps", type=int, default=50, help="time steps of 1 ms")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train = load("mnist_offline", num_steps=args.num_steps)
    order = np.random.default_rng(args.seed).permutation(len(train))
    train = train.subset(order[: args.train_size])
    test = load("mnist_offline", split="test", num_steps=args.num_steps)

    model = recurrent_classifier(
        train.num_inputs,
        train.num_classes,
        n_hidden=args.hidden,
        neuron=args.neuron,
        p_in=args.p_in,
        p_rec=args.p_rec,
        weight_gain=args.weight_gain,
        key=jax.random.key(args.seed),
    )
    if args.dense:
        model = model.to_dense()
    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    rule = eprop()  # c_reg=0.001, f_target 10 Hz, rate filter 500 ms
    key = jax.random.key(args.seed + 1)
    print(
        f"{type(model).__name__}: {args.hidden} {args.neuron.upper()} neurons, "
        f"{len(train)} training digits, {args.num_steps} steps"
    )

    start = time.perf_counter()
    for epoch in range(args.epochs):
        losses, accuracies, rates = [], [], []
        for batch in train.batches(args.batch_size, seed=epoch, drop_remainder=True):
            key, subkey = jax.random.split(key)
            model, opt_state, info = train_step(
                model, opt_state, batch, subkey, optimizer=optimizer, rule=rule
            )
            losses.append(float(info.loss))
            accuracies.append(float(info.accuracy))
            rates.append(float(info.rate_hz))
        print(
            f"epoch {epoch}: loss {np.mean(losses):.3f}, train accuracy "
            f"{np.mean(accuracies):.3f}, hidden rate {np.mean(rates):.1f} Hz, "
            f"{time.perf_counter() - start:.1f} s"
        )

    correct = 0
    for spikes, labels in test.batches(250, seed=0, shuffle=False):
        correct += float(accuracy(model, spikes, labels)) * len(labels)
    print(f"test accuracy {correct / len(test):.3f} (chance 0.1)")


if __name__ == "__main__":
    main()
