"""Two example structural rules written on :func:`jaxplastic.update_rows`."""

import jax.numpy as jnp
import jax.random as jr

import jaxplastic as jp


def prune_below(threshold: float):
    """Removes every synapse whose weight magnitude is below ``threshold``; proposes nothing."""

    def rule(row: jp.RowView, pre, post, key) -> jp.RowUpdate:
        weak = row.alive & (jnp.abs(row.synapses["weight"]) < threshold)
        return jp.RowUpdate(remove=weak, add_post=jnp.full((1,), row.n_post, row.post.dtype))

    return rule


def grow_random(k: int, p: float, weight: float):
    """Each row proposes ``k`` uniformly random targets, each kept with probability ``p``.

    Proposals may hit existing targets or repeat; the library refuses those and counts them.
    """

    def rule(row: jp.RowView, pre, post, key) -> jp.RowUpdate:
        k_target, k_keep = jr.split(key)
        targets = jr.randint(k_target, (k,), 0, row.n_post, dtype=row.post.dtype)
        keep = jr.bernoulli(k_keep, p, (k,))
        return jp.RowUpdate(
            remove=jnp.zeros_like(row.alive),
            add_post=jnp.where(keep, targets, row.n_post),
            add_values={"weight": jnp.full((k,), weight, jnp.float32)},
        )

    return rule
