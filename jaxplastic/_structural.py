"""Structural plasticity primitives: remove and add synapses inside ``jit``.

Slots are stable: removing a synapse frees its slot, adding one fills a free slot, nothing
ever moves. Every primitive keeps the invariants of :class:`RaggedConnectivity`, updates the
column view incrementally (touching only the changed synapses), and returns a
:class:`RewireInfo` with the ``changed`` slot mask and the counts. Additions that cannot be
placed are refused and counted by cause, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from ._connectivity import ColumnView, RaggedConnectivity
from ._custom_types import Array, ArrayLike, Bool, Int, PRNGKeyArray, Shaped

__all__ = [
    "RewireInfo",
    "RowUpdate",
    "RowView",
    "add_synapses",
    "remove_synapses",
    "reset_slots",
    "update_rows",
]


class RewireInfo(NamedTuple):
    """What one structural step did.

    Attributes:
        changed: ``bool[pre, cap]``, slots whose synapse was removed or added (reset
            slot-aligned state such as optimiser moments there with :func:`reset_slots`).
        removed: number of synapses removed.
        added: number of synapses added.
        refused_duplicate: proposals whose target was already in the row (or proposed twice).
        refused_row_full: proposals refused because the row had no free slot left.
        refused_column_full: proposals refused because the target's column view was full.
        refused_out_of_range: proposals naming a row or target outside the projection.
    """

    changed: Bool[Array, "pre cap"]
    removed: Int[Array, ""]
    added: Int[Array, ""]
    refused_duplicate: Int[Array, ""]
    refused_row_full: Int[Array, ""]
    refused_column_full: Int[Array, ""]
    refused_out_of_range: Int[Array, ""]

    @property
    def refused(self) -> Int[Array, ""]:
        """Total number of refused proposals."""
        return (
            self.refused_duplicate
            + self.refused_row_full
            + self.refused_column_full
            + self.refused_out_of_range
        )

    def merge(self, other: RewireInfo) -> RewireInfo:
        """Combines the records of two steps applied one after the other."""
        return RewireInfo(
            self.changed | other.changed, *(a + b for a, b in zip(self[1:], other[1:], strict=True))
        )


def _zero_count() -> Int[Array, ""]:
    return jnp.zeros((), jnp.int32)


def _count(x: Bool[Array, "..."]) -> Int[Array, ""]:
    return jnp.sum(x, dtype=jnp.int32)


# -- removal ----------------------------------------------------------------------------------


def remove_synapses(
    conn: RaggedConnectivity, mask: Bool[ArrayLike, "pre cap"]
) -> tuple[RaggedConnectivity, RewireInfo]:
    """Removes the synapses at the masked slots.

    Frees each masked live slot (target := sentinel, every per-synapse variable := 0) and
    unlinks it from the column view in O(1) through ``column.position``. Masked free slots
    are ignored.

    Args:
        conn: the projection.
        mask: ``bool[pre, cap]``, slots to remove.

    Returns:
        ``(conn, info)``: the new projection and a :class:`RewireInfo` (``removed`` counts the
        live slots freed; ``changed`` marks them).
    """
    mask = jnp.asarray(mask)
    if mask.shape != conn.post.shape or mask.dtype != jnp.bool_:
        raise ValueError(
            f"mask: expected a bool array of shape {conn.post.shape}, got {mask.dtype}{mask.shape}"
        )
    removed = mask & conn.alive
    post = jnp.where(removed, conn.n_post, conn.post)
    synapses = {k: jnp.where(removed, jnp.zeros((), v.dtype), v) for k, v in conn.synapses.items()}
    column = conn.column
    if column is not None:
        # A gather from the column side: each column entry asks whether its slot was removed.
        flat_removed = jnp.append(removed.ravel(), False)
        sentinel = conn.n_pre * conn.capacity
        pre_slot = jnp.where(flat_removed[column.pre_slot], sentinel, column.pre_slot)
        position = jnp.where(removed, column.column_capacity, column.position)
        column = ColumnView(pre_slot=pre_slot, position=position)
    new = RaggedConnectivity(post, synapses, column, conn.n_post)
    z = _zero_count()
    return new, RewireInfo(removed, _count(removed), z, z, z, z, z)


def _remove_in_rows(
    conn: RaggedConnectivity, rows: Int[Array, " k"], mask: Bool[Array, "k cap"]
) -> tuple[RaggedConnectivity, Bool[Array, "k cap"]]:
    """Removes masked slots of the given (distinct) rows; work is O(k * cap)."""
    old_post = conn.post[rows]
    removed = mask & (old_post != conn.n_post)
    post = conn.post.at[rows].set(jnp.where(removed, conn.n_post, old_post))
    synapses = {
        k: v.at[rows].set(jnp.where(removed, jnp.zeros((), v.dtype), v[rows]))
        for k, v in conn.synapses.items()
    }
    column = conn.column
    if column is not None:
        col_cap = column.column_capacity
        sentinel = conn.n_pre * conn.capacity
        old_pos = column.position[rows]
        col_rows = jnp.where(removed, old_post, conn.n_post)  # out of bounds -> dropped
        pre_slot = column.pre_slot.at[col_rows, old_pos].set(sentinel, mode="drop")
        position = column.position.at[rows].set(jnp.where(removed, col_cap, old_pos))
        column = ColumnView(pre_slot=pre_slot, position=position)
    return RaggedConnectivity(post, synapses, column, conn.n_post), removed


# -- addition ---------------------------------------------------------------------------------


def _segmented_rank(group: Array, include: Bool[Array, " k"]) -> Int[Array, " k"]:
    """For each proposal, how many included proposals of the same group come before it."""
    k = group.shape[0]
    index = jnp.arange(k)
    order = jnp.lexsort((index, group))
    g = group[order]
    inc = include[order].astype(jnp.int32)
    exclusive = jnp.cumsum(inc) - inc
    is_start = jnp.concatenate([jnp.ones((1,), bool), g[1:] != g[:-1]])
    start = lax.cummax(jnp.where(is_start, index, 0))
    rank_sorted = exclusive - exclusive[start]
    return jnp.zeros(k, jnp.int32).at[order].set(rank_sorted)


def _nth_free(free: Bool[Array, "k n"], n: Int[Array, " k"]) -> Int[Array, " k"]:
    """Index of the (n+1)-th True in each row of ``free`` (``free.shape[1]`` if none)."""
    return jnp.sum(jnp.cumsum(free, axis=1) <= n[:, None], axis=1, dtype=jnp.int32)


def add_synapses(
    conn: RaggedConnectivity,
    rows: Int[ArrayLike, " k"],
    targets: Int[ArrayLike, " k"],
    values: Mapping[str, Shaped[ArrayLike, " k"]] | None = None,
) -> tuple[RaggedConnectivity, RewireInfo]:
    """Adds synapses ``rows[e] -> targets[e]`` into free slots, refusing what cannot fit.

    Proposals are taken in order, greedily: each is placed if its row and its target's column
    still have room after the earlier accepted proposals. Refused (and counted by cause):
    a row or target out of range, a target already in the row or proposed twice for the same
    row, a full row, a full column (when the projection has a column view). A target equal to
    the sentinel ``n_post`` means "no proposal" and is neither added nor counted. Work is
    O(k * (cap + column_capacity) + k log k); nothing is rebuilt.

    Args:
        conn: the projection.
        rows: ``[k]`` presynaptic rows.
        targets: ``[k]`` postsynaptic targets (``n_post`` for none).
        values: initial per-synapse values, name -> ``[k]``; variables not named start at 0.

    Returns:
        ``(conn, info)`` with ``info.changed`` marking the filled slots.
    """
    rows = jnp.asarray(rows)
    targets = jnp.asarray(targets)
    if rows.ndim != 1 or targets.shape != rows.shape:
        raise ValueError(
            f"rows and targets: expected 1-D arrays of equal length, got {rows.shape} and "
            f"{targets.shape}"
        )
    for name, arr in (("rows", rows), ("targets", targets)):
        if not jnp.issubdtype(arr.dtype, jnp.integer):
            raise TypeError(f"{name}: expected an integer dtype, got {arr.dtype}")
    values = dict(values or {})
    unknown = set(values) - set(conn.synapses)
    if unknown:
        raise ValueError(
            f"values: unknown per-synapse variables {sorted(unknown)}; "
            f"the projection has {sorted(conn.synapses)}"
        )
    for name, v in values.items():
        if jnp.shape(v) != rows.shape:
            raise ValueError(f"values[{name!r}]: expected shape {rows.shape}, got {jnp.shape(v)}")

    n_pre, cap, n_post = conn.n_pre, conn.capacity, conn.n_post
    k = rows.shape[0]
    rows = rows.astype(conn.post.dtype)
    targets = targets.astype(conn.post.dtype)
    proposed = targets != n_post
    in_range = (rows >= 0) & (rows < n_pre) & (targets >= 0) & (targets < n_post)
    out_of_range = proposed & ~in_range
    safe_rows = jnp.where(in_range, rows, 0)
    safe_targets = jnp.where(in_range, targets, 0)

    row_post = conn.post[safe_rows]  # [k, cap]
    row_free = row_post == n_post
    exists = jnp.any(row_post == safe_targets[:, None], axis=1)
    candidate = proposed & in_range
    # Repeated (row, target) proposals: all but the first are duplicates. Non-candidates sort
    # into a group of their own so that they never match a real proposal.
    order = jnp.lexsort((jnp.arange(k), safe_targets, safe_rows, ~candidate))
    sorted_candidate = candidate[order]
    same = (
        (safe_rows[order][1:] == safe_rows[order][:-1])
        & (safe_targets[order][1:] == safe_targets[order][:-1])
        & sorted_candidate[1:]
        & sorted_candidate[:-1]
    )
    repeated = jnp.zeros(k, bool).at[order[1:]].set(same)
    duplicate = candidate & (exists | repeated)
    candidate = candidate & ~duplicate

    room_row = jnp.sum(row_free, axis=1, dtype=jnp.int32)
    column = conn.column
    if column is not None:
        sentinel = n_pre * cap
        col_free = column.pre_slot[safe_targets] == sentinel  # [k, colcap]
        room_col = jnp.sum(col_free, axis=1, dtype=jnp.int32)
    else:
        room_col = jnp.full(k, k + 1, jnp.int32)

    # Greedy acceptance in proposal order, computed in parallel: each round accepts every
    # proposal that fits even if all undecided earlier ones were accepted, and refuses every
    # one that cannot fit even if none of them were. The earliest undecided proposal is
    # always decided, so this ends; it usually takes one round.
    def undecided(state):
        accepted, row_full, col_full = state
        return jnp.any(candidate & ~accepted & ~row_full & ~col_full)

    def round_(state):
        accepted, row_full, col_full = state
        open_ = candidate & ~accepted & ~row_full & ~col_full
        upper = accepted | open_
        upper_r = _segmented_rank(safe_rows, upper)
        upper_c = _segmented_rank(safe_targets, upper)
        lower_r = _segmented_rank(safe_rows, accepted)
        lower_c = _segmented_rank(safe_targets, accepted)
        accept = open_ & (upper_r < room_row) & (upper_c < room_col)
        refuse_r = open_ & ~accept & (lower_r >= room_row)
        # The row is checked first, as in a sequential pass: a column refusal is final only
        # once the row is known to have room.
        refuse_c = open_ & ~accept & (upper_r < room_row) & (lower_c >= room_col)
        return accepted | accept, row_full | refuse_r, col_full | refuse_c

    none = jnp.zeros(k, bool)
    accepted, row_full, col_full = lax.while_loop(undecided, round_, (none, none, none))

    slot = _nth_free(row_free, _segmented_rank(safe_rows, accepted))
    write_rows = jnp.where(accepted, safe_rows, n_pre)  # out of bounds -> dropped
    post = conn.post.at[write_rows, slot].set(safe_targets, mode="drop")
    synapses = {}
    for name, v in conn.synapses.items():
        new = jnp.asarray(values[name], v.dtype) if name in values else jnp.zeros(k, v.dtype)
        synapses[name] = v.at[write_rows, slot].set(new, mode="drop")
    changed = jnp.zeros(conn.post.shape, bool).at[write_rows, slot].set(True, mode="drop")
    if column is not None:
        pos = _nth_free(col_free, _segmented_rank(safe_targets, accepted))
        flat = safe_rows * cap + slot
        write_cols = jnp.where(accepted, safe_targets, n_post)
        pre_slot = column.pre_slot.at[write_cols, pos].set(
            flat.astype(column.pre_slot.dtype), mode="drop"
        )
        position = column.position.at[write_rows, slot].set(pos, mode="drop")
        column = ColumnView(pre_slot=pre_slot, position=position)
    new_conn = RaggedConnectivity(post, synapses, column, n_post)
    info = RewireInfo(
        changed=changed,
        removed=_zero_count(),
        added=_count(accepted),
        refused_duplicate=_count(duplicate),
        refused_row_full=_count(row_full),
        refused_column_full=_count(col_full),
        refused_out_of_range=_count(out_of_range),
    )
    return new_conn, info


# -- the generic per-row update ---------------------------------------------------------------


class RowView(eqx.Module):
    """One row of a projection, as a structural rule sees it.

    Attributes:
        index: the presynaptic neuron (row) index, a scalar.
        post: ``[cap]`` targets; the sentinel ``n_post`` marks a free slot.
        alive: ``[cap]`` live-slot mask.
        synapses: per-synapse variables of the row, name -> ``[cap]``.
        n_post: number of postsynaptic neurons (static).
    """

    index: Int[Array, ""]
    post: Int[Array, " cap"]
    alive: Bool[Array, " cap"]
    synapses: dict[str, Shaped[Array, " cap"]]
    n_post: int = eqx.field(static=True)


class RowUpdate(NamedTuple):
    """What a structural rule asks for one row.

    Attributes:
        remove: ``bool[cap]``, slots whose synapse to remove.
        add_post: ``int[k]`` proposed new targets; the sentinel ``n_post`` means none.
        add_values: initial values of the proposed synapses, name -> ``[k]``; variables
            not named start at 0.
    """

    remove: Bool[Array, " cap"]
    add_post: Int[Array, " k"]
    add_values: Mapping[str, Shaped[Array, " k"]] = {}


Rule = Callable[[RowView, Any, Any, PRNGKeyArray], RowUpdate]


def update_rows(
    conn: RaggedConnectivity,
    rule: Rule,
    key: PRNGKeyArray,
    *,
    pre: Any = None,
    post: Any = None,
    rows: Int[ArrayLike, " m"] | None = None,
) -> tuple[RaggedConnectivity, RewireInfo]:
    """Applies a per-row structural rule to every row in parallel: remove, then add.

    The JAX counterpart of GeNN's custom connectivity update. ``rule(row, pre_row, post, key)``
    is a pure function of one :class:`RowView`, that row's presynaptic variables (``pre``
    indexed at the row: any pytree with a leading ``pre`` axis), the whole postsynaptic
    population's variables (``post``, read-only) and a per-row PRNG key; it returns a
    :class:`RowUpdate`. The library ``vmap``s it over the rows, removes the flagged synapses,
    then adds the proposals in row order with :func:`add_synapses` semantics.

    Args:
        conn: the projection.
        rule: the per-row rule.
        key: PRNG key; row ``i`` receives ``jax.random.fold_in(key, i)``.
        pre: pytree of presynaptic variables with leading axis ``n_pre`` (or None).
        post: pytree of postsynaptic variables (or None), passed whole to every row.
        rows: optional ``[m]`` distinct rows to visit (static ``m``); the rest are untouched
            and the work is O(m * cap). Default: every row.

    Returns:
        ``(conn, info)``: the new projection and a :class:`RewireInfo` for the whole step.

    Example:
        >>> def prune_weak(row, pre, post, key):
        ...     return RowUpdate(row.alive & (row.synapses["weight"] < 0.1),
        ...                      jnp.full((1,), row.n_post))
        >>> conn, info = update_rows(conn, prune_weak, jax.random.key(0))
    """
    if rows is None:
        row_index = jnp.arange(conn.n_pre, dtype=conn.post.dtype)
    else:
        row_index = jnp.asarray(rows)
        if row_index.ndim != 1 or not jnp.issubdtype(row_index.dtype, jnp.integer):
            raise ValueError(
                f"rows: expected a 1-D integer array, got {row_index.dtype}{row_index.shape}"
            )
        row_index = row_index.astype(conn.post.dtype)
        srt = jnp.sort(row_index)
        bad = jnp.any((row_index < 0) | (row_index >= conn.n_pre)) | jnp.any(srt[1:] == srt[:-1])
        row_index = eqx.error_if(
            row_index, bad, "update_rows: `rows` must be distinct and in range"
        )
    for leaf in jax.tree.leaves(pre):
        if jnp.shape(leaf)[:1] != (conn.n_pre,):
            raise ValueError(
                f"pre: expected every leaf to have leading axis n_pre={conn.n_pre}, "
                f"got shape {jnp.shape(leaf)}"
            )

    def one_row(i):
        view = RowView(
            index=i,
            post=conn.post[i],
            alive=conn.post[i] != conn.n_post,
            synapses={k: v[i] for k, v in conn.synapses.items()},
            n_post=conn.n_post,
        )
        pre_row = jax.tree.map(lambda x: x[i], pre)
        update = rule(view, pre_row, post, jr.fold_in(key, i))
        if not isinstance(update, RowUpdate):
            update = RowUpdate(*update)
        return update

    update = jax.vmap(one_row)(row_index)
    remove = jnp.asarray(update.remove)
    add_post = jnp.asarray(update.add_post)
    m = row_index.shape[0]
    if remove.shape != (m, conn.capacity) or remove.dtype != jnp.bool_:
        raise ValueError(
            f"rule: expected `remove` to be bool[{conn.capacity}] per row, got "
            f"{remove.dtype}{remove.shape[1:]}"
        )
    if add_post.ndim != 2:
        raise ValueError(
            f"rule: expected `add_post` to be int[k] per row, got {add_post.shape[1:]}"
        )

    if rows is None:
        conn, removed = remove_synapses(conn, remove)
        removed_mask = removed.changed
    else:
        conn, removed_rows = _remove_in_rows(conn, row_index, remove)
        removed_mask = jnp.zeros(conn.post.shape, bool).at[row_index].set(removed_rows)
    kk = add_post.shape[1]
    add_rows = jnp.repeat(row_index, kk)
    add_values = {name: jnp.asarray(v).reshape(-1) for name, v in dict(update.add_values).items()}
    conn, added = add_synapses(conn, add_rows, add_post.reshape(-1), add_values)
    info = added._replace(changed=added.changed | removed_mask, removed=_count(removed_mask))
    return conn, info


# -- slot-aligned state -----------------------------------------------------------------------


def reset_slots(tree: Any, changed: Bool[Array, "pre cap"]) -> Any:
    """Zeroes the entries at changed slots in every slot-aligned leaf of ``tree``.

    A leaf is slot-aligned when its trailing dimensions equal ``changed.shape`` (leading
    axes, such as a batch of eligibility traces, broadcast). Other leaves (scalars such as
    optax's step count, dense matrices of other shapes) are returned untouched. Apply it to
    the part of a state that belongs to one projection when two projections share a shape.

    Args:
        tree: any pytree, e.g. an optax state or eligibility traces.
        changed: ``bool[pre, cap]`` from :class:`RewireInfo`.

    Returns:
        The tree with the changed slots zeroed.
    """
    shape = changed.shape

    def reset(leaf):
        if not isinstance(leaf, jax.Array | jnp.ndarray) or leaf.shape[-len(shape) :] != shape:
            return leaf
        if leaf.ndim < len(shape):
            return leaf
        return jnp.where(changed, jnp.zeros((), leaf.dtype), leaf)

    return jax.tree.map(reset, tree)
