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
from .._structural import _count_bits, _nth_bit, _pack_bits, add_synapses, remove_synapses

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


def _first_valid(
    rows: Int[Array, " k"], targets: Int[Array, " k"], valid: Bool[Array, " k"]
) -> Bool[Array, " k"]:
    """:func:`_first_occurrences`, for a few hundred proposals without a sort."""
    k = rows.shape[0]
    if k * k <= _PAIRWISE:
        # Small rounds: compare every pair at once, one fused pass and no sort.
        lane = jnp.arange(k)
        earlier = (
            (rows[:, None] == rows[None, :])
            & (targets[:, None] == targets[None, :])
            & valid[None, :]
            & (lane[None, :] < lane[:, None])
        )
        return valid & ~jnp.any(earlier, axis=1)
    return _first_occurrences(rows, targets, valid)


_PAIRWISE = 512 * 512  # largest proposals_per_round ** 2 compared pairwise


def _place(
    conn: RaggedConnectivity,
    rows: Int[Array, " k"],
    targets: Int[Array, " k"],
    take: Bool[Array, " k"],
) -> tuple[RaggedConnectivity, Int[Array, ""]]:
    """:func:`add_synapses` (every variable 0) of the ``take`` proposals, when these are in
    range, distinct and not connected, and the projection has no column view.

    Then only a full row refuses, and the greedy in-order acceptance is: the proposal of rank
    ``r`` among its row's proposals is placed, in the row's ``r``-th free slot, if the row has
    more than ``r`` free slots. The ranks are counted pairwise, with no sort. Returns the
    projection and the number added.
    """
    k = rows.shape[0]
    lane = jnp.arange(k)
    earlier = (rows[:, None] == rows[None, :]) & take[None, :] & (lane[None, :] < lane[:, None])
    rank = jnp.sum(earlier, axis=1, dtype=jnp.int32)
    free = _pack_bits(conn.post[rows] == conn.n_post)  # [k, ceil(cap / 32)]
    accepted = take & (rank < _count_bits(free))
    slot = _nth_bit(free, rank, conn.capacity)
    write_rows = jnp.where(accepted, rows, conn.n_pre)  # out of bounds -> dropped
    post = conn.post.at[write_rows, slot].set(targets.astype(conn.post.dtype), mode="drop")
    synapses = {
        name: v.at[write_rows, slot].set(jnp.zeros((), v.dtype), mode="drop")
        for name, v in conn.synapses.items()
    }
    added = jnp.sum(accepted, dtype=jnp.int32)
    return RaggedConnectivity(post, synapses, None, conn.n_post), added


def _crossed(signs: Signs, conn: RaggedConnectivity) -> Bool[Array, "pre cap"]:
    """Live slots whose weight has the opposite sign of their stored sign (``s * w < 0``)."""
    if signs.n_post != conn.n_post or signs.bits.shape[0] != conn.n_pre:
        raise ValueError(
            f"signs are for a {signs.bits.shape[0]} x {signs.n_post} projection, "
            f"got {conn.n_pre} x {conn.n_post}"
        )
    alive = conn.alive
    rows = jnp.broadcast_to(jnp.arange(conn.n_pre)[:, None], conn.post.shape)
    targets = jnp.where(alive, conn.post, 0)
    word = signs.bits[rows, targets // _WORD]
    positive = ((word >> (targets % _WORD).astype(jnp.uint32)) & jnp.uint32(1)) == 1
    w = conn.weight
    # The same comparison as sign * w < 0 with sign = +-1 (false for 0, -0 and NaN).
    return alive & jnp.where(positive, w < 0, w > 0)


def _check_rounds(proposals_per_round: int, max_rounds: int) -> None:
    for name, value in (("proposals_per_round", proposals_per_round), ("max_rounds", max_rounds)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _rewire_projections(
    keys: list[PRNGKeyArray],
    conns: list[RaggedConnectivity],
    signs: list[Signs],
    *,
    proposals_per_round: int,
    max_rounds: int,
) -> tuple[list[RaggedConnectivity], list[DeepRInfo]]:
    """:func:`rewire` of several projections, each with its own key, in one regrowth loop.

    Each projection gets exactly what :func:`rewire` gives it alone (the same random draws,
    the same synapses): the loop runs until every projection is done, and a projection that is
    done proposes nothing. Sharing the loop, and drawing every projection's proposals in one
    batched call, saves the fixed cost of the small operations that dominate on a CPU.
    """
    _check_rounds(proposals_per_round, max_rounds)
    originals, conns, removals = conns, list(conns), []
    for i, (conn, s) in enumerate(zip(conns, signs, strict=True)):
        conn, removal = remove_synapses(conn, _crossed(s, conn))
        conns[i] = conn
        removals.append(removal)
    k = proposals_per_round
    dtypes = {conn.post.dtype for conn in conns}
    highs = jnp.asarray([n for c in conns for n in (c.n_pre, c.n_post)], jnp.int32)

    def draw(keys_):
        """Per projection: the next key, and ``k`` random rows and targets."""
        split = jax.vmap(lambda key: jr.split(key, 3))(keys_)  # [p, 3]
        # Row key, target key, per projection (raw uint32 keys keep their trailing axis).
        draw_keys = split[:, 1:].reshape((-1, *split.shape[2:]))
        if len(dtypes) == 1:
            idx = conns[0].post.dtype
            values = jax.vmap(lambda key, high: jr.randint(key, (k,), 0, high, dtype=idx))(
                draw_keys, highs.astype(idx)
            )
            pairs = [(values[2 * i], values[2 * i + 1]) for i in range(len(conns))]
        else:
            pairs = [
                (
                    jr.randint(draw_keys[2 * i], (k,), 0, c.n_pre, dtype=c.post.dtype),
                    jr.randint(draw_keys[2 * i + 1], (k,), 0, c.n_post, dtype=c.post.dtype),
                )
                for i, c in enumerate(conns)
            ]
        return split[:, 0], pairs

    def active(remaining, rounds):
        return (remaining > 0) & (rounds < max_rounds)

    def cond(carry):
        _, remaining, rounds, _ = carry
        return jnp.any(active(remaining, rounds))

    def body(carry):
        conns_, remaining, rounds, keys_ = carry
        on = active(remaining, rounds)
        keys_, pairs = draw(keys_)
        conns_ = list(conns_)
        added = []
        for i, (sg, (rows, targets)) in enumerate(zip(signs, pairs, strict=True)):

            def grow(conn, rows=rows, targets=targets, sg=sg, i=i):
                exists = jnp.any(conn.post[rows] == targets[:, None], axis=1)
                valid = ~exists
                if not sg.autapses:
                    valid = valid & (rows != targets)
                valid = _first_valid(rows, targets, valid)
                take = valid & (jnp.cumsum(valid) <= remaining[i])
                if conn.column is None and k * k <= _PAIRWISE:
                    return _place(conn, rows, targets, take)
                zeros = jnp.zeros(k, conn.weight.dtype)
                conn, info = add_synapses(
                    conn, rows, jnp.where(take, targets, conn.n_post), {"weight": zeros}
                )
                return conn, info.added

            def idle(conn):
                return conn, jnp.zeros((), jnp.int32)

            if len(conns_) == 1:
                conns_[i], n_added = grow(conns_[i])
            else:
                # A projection that is done skips its round (it would propose nothing).
                conns_[i], n_added = lax.cond(on[i], grow, idle, conns_[i])
            added.append(n_added)
        remaining = remaining - jnp.stack(added)
        return tuple(conns_), remaining, rounds + on.astype(jnp.int32), keys_

    removed = jnp.stack([r.removed for r in removals])
    carry = (tuple(conns), removed, jnp.zeros(len(conns), jnp.int32), jnp.stack(keys))
    conns_out, remaining, _, _ = lax.while_loop(cond, body, carry)
    # Regrowth only fills slots that were free after the pruning (free before it, or pruned),
    # so the slots changed are the pruned ones and those live now that were free before: no
    # mask is carried through the rounds, and no copy of the pruned projection is kept.
    changed = [
        r.changed | (new.alive & ~old.alive)
        for r, new, old in zip(removals, conns_out, originals, strict=True)
    ]
    infos = [
        DeepRInfo(
            changed=changed[i],
            removed=removed[i],
            added=removed[i] - remaining[i],
            shortfall=remaining[i],
        )
        for i in range(len(conns))
    ]
    return list(conns_out), infos


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
    (conn,), (info,) = _rewire_projections(
        [key], [conn], [signs], proposals_per_round=proposals_per_round, max_rounds=max_rounds
    )
    return conn, info
