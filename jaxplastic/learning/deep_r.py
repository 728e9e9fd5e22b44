"""DEEP R: sign-constrained rewiring that keeps the number of synapses constant.

Every existing and every potential synapse of a projection has a fixed sign, stored as one
bit per (pre, post) pair (:class:`Signs`). Training adds a signed L1 term to the gradients
(:func:`l1`, an optax transformation, optionally with the original Langevin noise); after the
optimiser, :func:`rewire` removes every synapse whose weight crossed zero against its sign and
regrows exactly as many at uniformly random free (pre, post) positions, with weight 0, all on
device in bounded time.

References:
    Bellec, Kappel, Maass & Legenstein (2018). Deep rewiring: training very sparse deep
    networks. ICLR.
    Knight, Senk & Nowotny (2025). Structural plasticity for sparse spiking networks on GPUs.
    arXiv:2510.19764 (GeNN's DEEP R, without the noise term).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jax import lax

from .._connectivity import RaggedConnectivity
from .._custom_types import Array, Bool, Float, Int, PRNGKeyArray
from .._structural import add_synapses, remove_synapses

__all__ = [
    "DeepRInfo",
    "L1State",
    "Signs",
    "init_signs",
    "l1",
    "rewire",
    "slot_signs",
]

_WORD = 32


class Signs(eqx.Module):
    """Fixed signs of every (pre, post) pair of one projection, one bit each.

    Attributes:
        bits: ``uint32[pre, ceil(post / 32)]``; bit ``j % 32`` of word ``j // 32`` of row ``i``
            is 1 if synapse ``i -> j`` is excitatory (positive), 0 if inhibitory.
        n_post: number of postsynaptic neurons (static).
        autapses: whether ``i -> i`` pairs may exist (static; False for recurrent projections
            without self-connections, so regrowth never creates one).
    """

    bits: Int[Array, "pre words"]
    n_post: int = eqx.field(static=True)
    autapses: bool = eqx.field(static=True)

    def __check_init__(self):
        words = -(-self.n_post // _WORD)
        if self.bits.ndim != 2 or self.bits.shape[1] != words:
            raise ValueError(
                f"bits: expected shape [n_pre, {words}] for n_post={self.n_post}, "
                f"got {self.bits.shape}"
            )
        if self.bits.dtype != jnp.uint32:
            raise TypeError(f"bits: expected uint32, got {self.bits.dtype}")

    def sign(
        self, rows: Int[Array, "*shape"], targets: Int[Array, "*shape"]
    ) -> Float[Array, "*shape"]:
        """``+1.0`` or ``-1.0`` for each (row, target) pair (targets must be in range)."""
        word = self.bits[rows, targets // _WORD]
        bit = (word >> (targets % _WORD).astype(jnp.uint32)) & jnp.uint32(1)
        return jnp.where(bit == 1, 1.0, -1.0).astype(jnp.float32)

    def to_dense(self) -> Float[Array, "pre post"]:
        """Dense ``[pre, post]`` matrix of signs (+-1)."""
        n_pre = self.bits.shape[0]
        rows = jnp.broadcast_to(jnp.arange(n_pre)[:, None], (n_pre, self.n_post))
        cols = jnp.broadcast_to(jnp.arange(self.n_post)[None], (n_pre, self.n_post))
        return self.sign(rows, cols)


def init_signs(key: PRNGKeyArray, conn: RaggedConnectivity, *, autapses: bool = True) -> Signs:
    """Signs for a projection: an existing synapse takes its initial weight's sign, every other
    pair (and a synapse whose weight is exactly 0) a fair coin flip.

    Args:
        key: PRNG key.
        conn: the projection, with its initial weights.
        autapses: False if the projection excludes self-connections (then ``n_pre == n_post``).

    Returns:
        A :class:`Signs`; memory is one bit per (pre, post) pair.
    """
    if not autapses and conn.n_pre != conn.n_post:
        raise ValueError(
            f"autapses=False needs n_pre == n_post, got {conn.n_pre} and {conn.n_post}"
        )
    words = -(-conn.n_post // _WORD)
    random_bits = jr.bits(key, (conn.n_pre, words), jnp.uint32)
    rows = jnp.broadcast_to(jnp.arange(conn.n_pre)[:, None], conn.post.shape)
    known = conn.alive & (conn.weight != 0)
    target = jnp.where(known, conn.post, 0)
    bit = jnp.left_shift(jnp.uint32(1), (target % _WORD).astype(jnp.uint32))
    word_rows = jnp.where(known, rows, conn.n_pre)  # out of bounds -> dropped
    # Each (row, target) pair is unique, so adding bits is the same as or-ing them.
    mask = jnp.zeros_like(random_bits).at[word_rows, target // _WORD].add(bit, mode="drop")
    value = (
        jnp.zeros_like(random_bits)
        .at[word_rows, target // _WORD]
        .add(jnp.where(conn.weight > 0, bit, jnp.uint32(0)), mode="drop")
    )
    return Signs(bits=(random_bits & ~mask) | value, n_post=conn.n_post, autapses=autapses)


def slot_signs(signs: Signs, conn: RaggedConnectivity) -> Float[Array, "pre cap"]:
    """The sign of every slot's synapse, ``+-1``, and 0 in free slots."""
    if signs.n_post != conn.n_post or signs.bits.shape[0] != conn.n_pre:
        raise ValueError(
            f"signs are for a {signs.bits.shape[0]} x {signs.n_post} projection, "
            f"got {conn.n_pre} x {conn.n_post}"
        )
    rows = jnp.broadcast_to(jnp.arange(conn.n_pre)[:, None], conn.post.shape)
    s = signs.sign(rows, jnp.where(conn.alive, conn.post, 0))
    return jnp.where(conn.alive, s, 0.0)


# -- the signed L1 term, as an optax transformation -------------------------------------------


class L1State(NamedTuple):
    """State of :func:`l1`: the PRNG key of the Langevin noise (unused without noise)."""

    key: PRNGKeyArray


def l1(
    strength: float,
    *,
    temperature: float = 0.0,
    learning_rate: float | None = None,
    key: PRNGKeyArray | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adds DEEP R's signed L1 term (and optionally its Langevin noise) to the gradients.

    $g \leftarrow g + C\,s + \sqrt{2T/\eta}\,\nu$, $\nu \sim N(0, 1)$, for every
    sign-constrained entry with sign $s = \pm 1$ (entries with $s = 0$, i.e. free slots, get
    nothing). With plain SGD at learning rate $\eta$ this is exactly DEEP R's update
    $\theta \leftarrow \theta - \eta(\partial E/\partial\theta + C s)
    + \sqrt{2\eta T}\nu$; GeNN's version has no noise (``temperature=0``, the default).
    Chain it before the optimiser: ``optax.chain(deep_r.l1(0.01), optax.adam(1e-3))``.

    Args:
        strength: the L1 strength ``C`` (>= 0), e.g. one of 0.01, 0.05, 0.1, 0.5.
        temperature: Langevin temperature ``T`` (>= 0).
        learning_rate: ``eta``, required when ``temperature > 0``.
        key: PRNG key for the noise, required when ``temperature > 0``.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes a keyword-only
        ``signs``: a pytree with the structure of the updates, each leaf a ``+-1/0`` array of
        the update's shape (see :func:`slot_signs`) or None for unconstrained leaves.

    References:
        Bellec et al. (2018), Deep rewiring, ICLR.
    """
    if strength < 0:
        raise ValueError(f"strength: expected >= 0, got {strength}")
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    noisy = temperature > 0
    if noisy and (learning_rate is None or learning_rate <= 0 or key is None):
        raise ValueError("temperature > 0 needs a positive `learning_rate` and a `key`")
    noise_scale = (2.0 * temperature / learning_rate) ** 0.5 if noisy else 0.0

    def init(params) -> L1State:
        del params
        return L1State(key=key if noisy else jr.key(0))

    def update(updates, state: L1State, params=None, *, signs, **extra):
        del params, extra
        leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
        sign_leaves = treedef.flatten_up_to(signs)
        keys = jr.split(state.key, len(leaves) + 1)
        out = []
        for leaf, s, k in zip(leaves, sign_leaves, keys[1:], strict=True):
            if leaf is None or s is None:
                out.append(leaf)
                continue
            if jnp.shape(s) != jnp.shape(leaf):
                raise ValueError(
                    f"signs: expected a leaf of shape {jnp.shape(leaf)}, got {jnp.shape(s)}"
                )
            s = jnp.asarray(s, leaf.dtype)
            new = leaf + strength * s
            if noisy:
                new = new + noise_scale * jnp.abs(s) * jr.normal(k, leaf.shape, leaf.dtype)
            out.append(new)
        new_state = L1State(key=keys[0] if noisy else state.key)
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init, update)


# -- rewiring ---------------------------------------------------------------------------------


class DeepRInfo(NamedTuple):
    """What one DEEP R rewiring step did.

    Attributes:
        changed: ``bool[pre, cap]``, slots removed or regrown (reset optimiser moments and
            eligibility traces there with :func:`jaxplastic.reset_slots`).
        removed: synapses removed (their weight crossed zero against their sign).
        added: synapses regrown.
        shortfall: ``removed - added``: regrowths that did not fit in the bounded number of
            rounds (0 unless rows or columns are nearly full); the synapse count then drops by
            this much, and it is reported, never hidden.
    """

    changed: Bool[Array, "pre cap"]
    removed: Int[Array, ""]
    added: Int[Array, ""]
    shortfall: Int[Array, ""]


def _first_occurrences(rows: Int[Array, " k"], targets: Int[Array, " k"], valid: Bool[Array, " k"]):
    """Marks the first valid proposal of each distinct (row, target) pair."""
    k = rows.shape[0]
    order = jnp.lexsort((jnp.arange(k), targets, rows, ~valid))
    r, t, v = rows[order], targets[order], valid[order]
    repeat = (r[1:] == r[:-1]) & (t[1:] == t[:-1]) & v[1:] & v[:-1]
    first = jnp.ones(k, bool).at[order[1:]].set(~repeat)
    return valid & first


def rewire(
    key: PRNGKeyArray,
    conn: RaggedConnectivity,
    signs: Signs,
    *,
    proposals_per_round: int = 256,
    max_rounds: int = 64,
) -> tuple[RaggedConnectivity, DeepRInfo]:
    """Removes synapses whose weight crossed zero against their sign; regrows as many at random.

    Pruning: every live synapse with ``sign * weight < 0``. Regrowth: rounds of
    ``proposals_per_round`` (pre, post) pairs drawn uniformly over the whole projection; a
    proposal is rejected if the pair is connected, is an autapse the projection excludes, or
    repeats an earlier proposal, and the first ``remaining`` others are added with weight 0
    (a full row or column refuses the addition, and a later round retries). Accepted pairs
    are therefore uniform over the free positions. At most ``max_rounds`` rounds run (no
    unbounded rejection sampling); regrowths left over are reported as ``shortfall``.

    Args:
        key: PRNG key.
        conn: the projection (after the optimiser step).
        signs: its :class:`Signs`.
        proposals_per_round: proposals drawn per round (static).
        max_rounds: bound on the number of rounds (static).

    Returns:
        ``(conn, info)``; ``conn.num_synapses`` is unchanged unless ``info.shortfall > 0``.
    """
    for name, value in (("proposals_per_round", proposals_per_round), ("max_rounds", max_rounds)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    s = slot_signs(signs, conn)
    crossed = conn.alive & (conn.weight * s.astype(conn.weight.dtype) < 0)
    conn, removal = remove_synapses(conn, crossed)
    n_pre, n_post = conn.n_pre, conn.n_post
    idx = conn.post.dtype

    def cond(carry):
        _, remaining, round_, _, _ = carry
        return (remaining > 0) & (round_ < max_rounds)

    def body(carry):
        conn, remaining, round_, changed, key = carry
        key, k_row, k_target = jr.split(key, 3)
        rows = jr.randint(k_row, (proposals_per_round,), 0, n_pre, dtype=idx)
        targets = jr.randint(k_target, (proposals_per_round,), 0, n_post, dtype=idx)
        exists = jnp.any(conn.post[rows] == targets[:, None], axis=1)
        valid = ~exists
        if not signs.autapses:
            valid = valid & (rows != targets)
        valid = _first_occurrences(rows, targets, valid)
        take = valid & (jnp.cumsum(valid) <= remaining)
        zeros = jnp.zeros(proposals_per_round, conn.weight.dtype)
        conn, info = add_synapses(conn, rows, jnp.where(take, targets, n_post), {"weight": zeros})
        return conn, remaining - info.added, round_ + 1, changed | info.changed, key

    carry = (conn, removal.removed, jnp.zeros((), jnp.int32), removal.changed, key)
    conn, remaining, _, changed, _ = lax.while_loop(cond, body, carry)
    info = DeepRInfo(
        changed=changed,
        removed=removal.removed,
        added=removal.removed - remaining,
        shortfall=remaining,
    )
    return conn, info
