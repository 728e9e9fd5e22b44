"""Training steps for the classifiers: dense, static sparse and DEEP R, behind one API.

The three training methods of the GeNN structural-plasticity paper (Knight, Senk & Nowotny
2025; MODELS.md section 1):

- ``"dense"``: a :class:`~jaxplastic.models.DenseClassifier` trained with e-prop and Adam;
- ``"static"``: a :class:`~jaxplastic.models.RecurrentClassifier` whose sparse connectivity
  never changes, trained the same way (updates of free slots are zeroed);
- ``"deep_r"``: the same sparse model with DEEP R (Bellec et al. 2018, as run by GeNN): one
  jitted step computes the e-prop gradients, adds the signed L1 term, applies Adam, removes
  every synapse whose weight crossed zero against its fixed sign, regrows as many at random
  free (pre, post) positions of the same projection with weight 0, and zeroes the optimiser
  moments of every changed slot. The synapse count of each projection is conserved exactly
  (a shortfall, possible only when rows are nearly full, is reported).

:func:`trainer` selects one of the three by name and gives them one interface,
``init(model, *, key) -> TrainState`` and ``step(model, state, batch) -> (model, state,
TrainInfo)``, so a training loop (or a command line) switches method with one string.
:func:`init_deep_r` and :func:`deep_r_train_step` are the DEEP R pair on their own.

References:
    Bellec, Kappel, Maass & Legenstein (2018). Deep rewiring: training very sparse deep
    networks. ICLR.
    Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein & Maass (2020). A solution to the
    learning dilemma for recurrent networks of spiking neurons. Nature Communications 11, 3625.
    Knight, Senk & Nowotny (2025). Structural plasticity for sparse spiking networks on GPUs.
    arXiv:2510.19764.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .._connectivity import RaggedConnectivity
from .._custom_types import Array, ArrayLike, Float, Int, PRNGKeyArray, Shaped
from ..models._classifier import AbstractClassifier, DenseClassifier, RecurrentClassifier
from ._eprop import Eprop, EpropInfo, eprop, train_step as eprop_train_step
from .deep_r import DeepRInfo, Signs, _rewire_projections, init_signs, l1, slot_signs

__all__ = [
    "DeepRCounts",
    "TrainInfo",
    "TrainState",
    "Trainer",
    "deep_r_train_step",
    "init_deep_r",
    "trainer",
    "with_padding",
]

Method = Literal["dense", "static", "deep_r"]
METHODS: tuple[str, ...] = ("dense", "static", "deep_r")

Batch = tuple[Shaped[ArrayLike, "batch time in"], Int[ArrayLike, " batch"]]


class TrainState(NamedTuple):
    """Everything a training step carries from one batch to the next, besides the model.

    Attributes:
        opt_state: the optimiser state, initialised on
            ``eqx.filter(model, eqx.is_inexact_array)``.
        key: PRNG key of the rewiring, split on every step (unused by dense/static training).
        signs_input: :class:`~jaxplastic.learning.deep_r.Signs` of the input projection,
            one bit per (in, hidden) pair (DEEP R; None otherwise).
        signs_recurrent: :class:`~jaxplastic.learning.deep_r.Signs` of the recurrent
            projection, one bit per (hidden, hidden) pair (DEEP R; None otherwise).
    """

    opt_state: Any
    key: PRNGKeyArray
    signs_input: Signs | None = None
    signs_recurrent: Signs | None = None


class DeepRCounts(NamedTuple):
    """What the rewiring of one projection did in one step (all int32 scalars).

    Attributes:
        removed: synapses removed because their weight crossed zero against their sign.
        added: synapses regrown (``removed - shortfall``).
        shortfall: regrowths that found no free position in the bounded number of rounds;
            the projection's synapse count dropped by this much (0 unless rows are nearly
            full).
    """

    removed: Int[Array, ""]
    added: Int[Array, ""]
    shortfall: Int[Array, ""]

    @classmethod
    def of(cls, info: DeepRInfo) -> DeepRCounts:
        """The counts of a :class:`~jaxplastic.learning.deep_r.DeepRInfo`."""
        return cls(removed=info.removed, added=info.added, shortfall=info.shortfall)

    @classmethod
    def zero(cls) -> DeepRCounts:
        """No rewiring (dense and static training)."""
        zero = jnp.zeros((), jnp.int32)
        return cls(removed=zero, added=zero, shortfall=zero)


class TrainInfo(NamedTuple):
    """Diagnostics of one training step, for logging (the same for every method).

    Attributes:
        loss: cross-entropy per example and time step (see
            :class:`~jaxplastic.learning.EpropInfo`), before the update.
        accuracy: batch accuracy before the update.
        rate_hz: mean hidden firing rate (Hz).
        input: :class:`DeepRCounts` of the input projection (zeros without DEEP R).
        recurrent: :class:`DeepRCounts` of the recurrent projection (zeros without DEEP R).
    """

    loss: Float[Array, ""]
    accuracy: Float[Array, ""]
    rate_hz: Float[Array, ""]
    input: DeepRCounts
    recurrent: DeepRCounts

    @classmethod
    def of(cls, info: EpropInfo, input: DeepRCounts, recurrent: DeepRCounts) -> TrainInfo:
        return cls(info.loss, info.accuracy, info.rate_hz, input, recurrent)


# -- spare capacity ---------------------------------------------------------------------------


def _pad_projection(conn: RaggedConnectivity, r: float) -> RaggedConnectivity:
    if isinstance(conn.post, jax.core.Tracer):
        raise ValueError("with_padding: needs concrete arrays (call it outside jit)")
    longest = int(np.asarray(conn.row_lengths).max(initial=0))
    capacity = max(1, math.ceil((1.0 + r) * longest))
    # Live slots first, in their order, then pad or cut free slots to the new capacity.
    order = jnp.argsort(~conn.alive, axis=1, stable=True)

    def fit(values: Array, fill) -> Array:
        values = jnp.take_along_axis(values, order, axis=1)[:, :capacity]
        extra = capacity - values.shape[1]
        return jnp.pad(values, ((0, 0), (0, extra)), constant_values=fill) if extra else values

    post = fit(conn.post, conn.n_post)
    synapses = {name: fit(v, 0) for name, v in conn.synapses.items()}
    padded = RaggedConnectivity(post, synapses, None, conn.n_post)
    if conn.column is not None:
        padded = padded.with_column_view(conn.column.column_capacity)
    return padded


def with_padding(x: RecurrentClassifier | RaggedConnectivity, r: float):
    """Sets the row capacity of ragged projections to ``ceil((1 + r) * longest row)``.

    DEEP R needs spare slots in every row, because regrowth lands on random rows: GeNN uses
    capacity $= (1 + r) \\cdot \\max_i \\text{len}(\\text{row}_i)$ ("padding"), with $r = 1$ for
    timing and $r$ = 2 to 5 for accuracy; ``r = 0`` gives the tightest capacity, the right
    choice for static sparse training. Synapses keep their values and their order; live slots
    move to the front of each row. Every per-synapse e-prop cost scales with the capacity, so
    padding is paid for in every training step.

    Args:
        x: a :class:`~jaxplastic.models.RecurrentClassifier` (both of its ragged projections
            are padded, each to its own longest row) or one
            :class:`~jaxplastic.RaggedConnectivity`. Arrays must be concrete (not traced).
        r: spare capacity factor (>= 0).

    Returns:
        The same type, with capacity ``max(1, ceil((1 + r) * longest row))``; a column view,
        if present, is rebuilt with its column capacity.

    Raises:
        ValueError: ``r < 0`` or traced arrays.
        TypeError: ``x`` is neither a classifier nor a projection.

    Example:
        >>> import jax
        >>> from jaxplastic.models import recurrent_classifier
        >>> model = recurrent_classifier(100, 3, n_hidden=50, p_in=0.1, p_rec=0.1,
        ...                              key=jax.random.key(0))
        >>> padded = with_padding(model, 2.0)
        >>> longest = int(model.input.row_lengths.max())
        >>> padded.input.capacity == 3 * longest
        True
    """
    if isinstance(r, bool) or not isinstance(r, int | float) or not r >= 0:
        raise ValueError(f"with_padding: r: expected a number >= 0, got {r!r}")
    if isinstance(x, RecurrentClassifier):
        return eqx.tree_at(
            lambda m: (m.input, m.recurrent),
            x,
            (_pad_projection(x.input, r), _pad_projection(x.recurrent, r)),
        )
    if isinstance(x, RaggedConnectivity):
        return _pad_projection(x, r)
    raise TypeError(
        "with_padding: x: expected a RecurrentClassifier or RaggedConnectivity, "
        f"got {type(x).__name__}"
    )


# -- DEEP R -----------------------------------------------------------------------------------


def _ragged_weights(tree):
    return tree.input.synapses["weight"], tree.recurrent.synapses["weight"]


def _check_ragged(owner: str, model) -> None:
    if not isinstance(model, RecurrentClassifier):
        raise TypeError(
            f"{owner}: model: expected a RecurrentClassifier (ragged projections), "
            f"got {type(model).__name__}"
        )


def init_deep_r(
    model: RecurrentClassifier,
    *,
    key: PRNGKeyArray,
    optimizer: optax.GradientTransformation,
    recurrent_autapses: bool = False,
) -> TrainState:
    """The state of DEEP R training: optimiser state, the fixed signs and the rewiring key.

    Every existing synapse takes the sign of its initial weight, every other (pre, post) pair
    (and a synapse whose weight is exactly 0) a fair coin flip
    (:func:`~jaxplastic.learning.deep_r.init_signs`).

    Args:
        model: the sparse classifier, with spare row capacity for regrowth (see
            :func:`with_padding`).
        key: PRNG key (signs and all later rewiring).
        optimizer: the optimiser that :func:`deep_r_train_step` will use, usually
            ``optax.chain(deep_r.l1(C), optax.adam(1e-3))``.
        recurrent_autapses: whether the recurrent projection may hold ``i -> i`` synapses
            (default False, as in the paper: regrowth never creates one).

    Returns:
        A :class:`TrainState` with both signs set.

    References:
        Bellec et al. (2018), Deep rewiring, ICLR.
    """
    _check_ragged("init_deep_r", model)
    k_in, k_rec, k_rewire = jr.split(key, 3)
    return TrainState(
        opt_state=optimizer.init(eqx.filter(model, eqx.is_inexact_array)),
        key=k_rewire,
        signs_input=init_signs(k_in, model.input),
        signs_recurrent=init_signs(k_rec, model.recurrent, autapses=recurrent_autapses),
    )


def _mask_free_slots(model: RecurrentClassifier, updates):
    """Zeroes updates on free slots, so that any optimiser keeps them at weight 0."""
    return eqx.tree_at(
        _ragged_weights,
        updates,
        replace=tuple(
            jnp.where(conn.alive, u, jnp.zeros((), u.dtype))
            for conn, u in zip(
                (model.input, model.recurrent), _ragged_weights(updates), strict=True
            )
        ),
    )


def _reset_changed_slots(optimizer, opt_state, params, changed_in, changed_rec):
    """Zeroes, in every parameter-shaped tree of the optimiser state (Adam's ``mu`` and
    ``nu``), the entries of the changed slots of the matching projection only.

    The masks are placed by position in the parameter tree, so two projections of the same
    shape are never confused (unlike a shape-based :func:`jaxplastic.reset_slots`).
    """
    masks = eqx.tree_at(
        _ragged_weights, jax.tree.map(lambda _: False, params), (changed_in, changed_rec)
    )

    def reset(leaf, changed):
        if changed is False or not eqx.is_array(leaf) or leaf.shape != changed.shape:
            return leaf
        return jnp.where(changed, jnp.zeros((), leaf.dtype), leaf)

    return optax.tree_utils.tree_map_params(optimizer, reset, opt_state, masks)


@eqx.filter_jit
def deep_r_train_step(
    model: RecurrentClassifier,
    state: TrainState,
    batch: Batch,
    *,
    optimizer: optax.GradientTransformation,
    rule: Eprop | None = None,
    dt: float = 1.0,
    proposals_per_round: int = 256,
    max_rounds: int = 64,
) -> tuple[RecurrentClassifier, TrainState, TrainInfo]:
    r"""One jitted DEEP R training step with e-prop gradients.

    In this order, on one batch:

    1. e-prop gradients $g$ of every trainable parameter (``rule.gradients``);
    2. the optimiser, called with ``signs=`` (the sign of each slot, 0 in free slots, on the
       input and recurrent weights; None on the readout and bias), so that a chained
       :func:`~jaxplastic.learning.deep_r.l1` adds $C s$ to the ragged weight gradients:
       $\theta \leftarrow \theta + \mathrm{Adam}(g + C s)$; updates of free slots are zeroed;
    3. per projection, :func:`~jaxplastic.learning.deep_r.rewire` with its own key
       (``state.key`` splits into the next state key, the input key and the recurrent key,
       in that order): every live synapse with $s\,w < 0$ is removed and as many are
       regrown at uniformly random free (pre, post) pairs of that projection, with weight 0
       and their stored sign;
    4. the optimiser moments (every parameter-shaped tree of the optimiser state, e.g. Adam's
       ``mu`` and ``nu``) are zeroed at the changed slots of the matching projection only.

    The e-prop eligibility traces start at zero for every batch (online e-prop runs each
    batch of sequences from rest), so rewiring between batches needs no trace reset. Shapes
    never change, so the step compiles once for a given model size and optimiser.

    Args:
        model: a :class:`~jaxplastic.models.RecurrentClassifier` with spare row capacity.
        state: from :func:`init_deep_r` (or the previous step).
        batch: ``(spikes [batch, time, in], labels [batch])``.
        optimizer: optax transformation (static: create it once), normally
            ``optax.chain(deep_r.l1(C), optax.adam(1e-3))``; it is called with the keyword
            ``signs=`` (a plain transformation without extra arguments is accepted and gets
            no L1 term).
        rule: the e-prop rule (static; default ``eprop()``).
        dt: step size (ms, static).
        proposals_per_round: regrowth proposals per round (static; see ``rewire``).
        max_rounds: bound on regrowth rounds (static; see ``rewire``).

    Returns:
        ``(model, state, info)``: the rewired model, the new :class:`TrainState` (its key
        split) and a :class:`TrainInfo` with the rewiring counts of both projections.

    Raises:
        TypeError: ``model`` is not a :class:`~jaxplastic.models.RecurrentClassifier`.
        ValueError: ``state`` has no signs (it did not come from :func:`init_deep_r`).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from jaxplastic.learning import deep_r
        >>> from jaxplastic.models import recurrent_classifier
        >>> model = recurrent_classifier(20, 3, n_hidden=16, p_in=0.2, p_rec=0.2,
        ...                              key=jax.random.key(0))
        >>> model = with_padding(model, 2.0)
        >>> optimizer = optax.chain(deep_r.l1(0.01), optax.adam(1e-3))
        >>> state = init_deep_r(model, key=jax.random.key(1), optimizer=optimizer)
        >>> batch = (jnp.ones((4, 30, 20), jnp.uint8), jnp.array([0, 1, 2, 0]))
        >>> model, state, info = deep_r_train_step(model, state, batch, optimizer=optimizer)
        >>> int(info.input.removed) == int(info.input.added) + int(info.input.shortfall)
        True

    References:
        Bellec et al. (2018), Deep rewiring, ICLR. Knight, Senk & Nowotny (2025),
        arXiv:2510.19764.
    """
    _check_ragged("deep_r_train_step", model)
    if state.signs_input is None or state.signs_recurrent is None:
        raise ValueError(
            "deep_r_train_step: state: expected the signs of both projections (from "
            "init_deep_r), got None"
        )
    rule = eprop() if rule is None else rule
    model, opt_state, params, eprop_info = _deep_r_update(
        model, state, batch, optimizer=optimizer, rule=rule, dt=dt
    )
    model, state, counts = _deep_r_rewire(
        model,
        state,
        opt_state,
        params,
        optimizer=optimizer,
        proposals_per_round=proposals_per_round,
        max_rounds=max_rounds,
    )
    return model, state, TrainInfo.of(eprop_info, *counts)


def _deep_r_update(model, state: TrainState, batch: Batch, *, optimizer, rule: Eprop, dt: float):
    """Steps 1-2 of :func:`deep_r_train_step`: e-prop gradients, signed L1, optimiser.

    Returns ``(model, opt_state, params, eprop_info)``, ``params`` being the parameters
    before the update (the tree the optimiser state is shaped like). Un-jitted; the two
    halves are separate so that ``benchmarks/deep_r.py`` can time the rewiring on its own.
    """
    spikes, labels = batch
    grads, eprop_info = rule.gradients(model, spikes, labels=labels, dt=dt)

    params = eqx.filter(model, eqx.is_inexact_array)
    signs = eqx.tree_at(
        _ragged_weights,
        jax.tree.map(lambda _: None, params),
        (
            slot_signs(state.signs_input, model.input),
            slot_signs(state.signs_recurrent, model.recurrent),
        ),
        is_leaf=lambda x: x is None,
    )
    transform = optax.with_extra_args_support(optimizer)
    updates, opt_state = transform.update(grads, state.opt_state, params, signs=signs)
    model = eqx.apply_updates(model, _mask_free_slots(model, updates))
    return model, opt_state, params, eprop_info


def _deep_r_rewire(
    model,
    state: TrainState,
    opt_state,
    params,
    *,
    optimizer,
    proposals_per_round: int,
    max_rounds: int,
):
    """Steps 3-4 of :func:`deep_r_train_step`: prune and regrow each projection with its own
    key, then zero the optimiser moments of the changed slots.

    Returns ``(model, state, (input counts, recurrent counts))``; un-jitted.
    """
    key, k_in, k_rec = jr.split(state.key, 3)
    # Both projections in one regrowth loop: the same result as one `rewire` each with its
    # own key, with half the loops' fixed cost.
    (conn_in, conn_rec), (info_in, info_rec) = _rewire_projections(
        [k_in, k_rec],
        [model.input, model.recurrent],
        [state.signs_input, state.signs_recurrent],
        proposals_per_round=proposals_per_round,
        max_rounds=max_rounds,
    )
    model = eqx.tree_at(lambda m: (m.input, m.recurrent), model, (conn_in, conn_rec))
    opt_state = _reset_changed_slots(
        optimizer, opt_state, params, info_in.changed, info_rec.changed
    )
    counts = (DeepRCounts.of(info_in), DeepRCounts.of(info_rec))
    return model, state._replace(opt_state=opt_state, key=key), counts


# -- one interface for the three methods ------------------------------------------------------


@eqx.filter_jit
def _eprop_train_step(
    model: AbstractClassifier,
    state: TrainState,
    batch: Batch,
    *,
    optimizer: optax.GradientTransformation,
    rule: Eprop | None,
    dt: float,
) -> tuple[AbstractClassifier, TrainState, TrainInfo]:
    """Dense or static sparse training: the e-prop ``train_step``, with a :class:`TrainInfo`."""
    model, opt_state, info = eprop_train_step(
        model, state.opt_state, batch, optimizer=optimizer, rule=rule, dt=dt
    )
    counts = DeepRCounts.zero()
    return model, state._replace(opt_state=opt_state), TrainInfo.of(info, counts, counts)


class Trainer(NamedTuple):
    """A training method with its hyperparameters bound (from :func:`trainer`).

    Attributes:
        method: ``"dense"``, ``"static"`` or ``"deep_r"``.
        optimizer: the optax transformation in use.
        init: ``init(model, *, key) -> TrainState``.
        step: ``step(model, state, batch) -> (model, state, TrainInfo)``, jitted (it calls
            :func:`deep_r_train_step` or the e-prop ``train_step``; one compilation per model
            size and trainer).
    """

    method: str
    optimizer: optax.GradientTransformation
    init: Callable[..., TrainState]
    step: Callable[..., tuple[AbstractClassifier, TrainState, TrainInfo]]


def trainer(
    method: Method,
    *,
    learning_rate: float = 1e-3,
    l1_strength: float = 0.01,
    optimizer: optax.GradientTransformation | None = None,
    rule: Eprop | None = None,
    dt: float = 1.0,
    proposals_per_round: int = 256,
    max_rounds: int = 64,
) -> Trainer:
    """Dense, static sparse or DEEP R training with e-prop, selected by name.

    - ``"dense"``: a :class:`~jaxplastic.models.DenseClassifier`, e-prop + Adam.
    - ``"static"``: a :class:`~jaxplastic.models.RecurrentClassifier` whose connectivity is
      fixed, e-prop + Adam (updates of free slots zeroed).
    - ``"deep_r"``: the same sparse model, e-prop + signed L1 + Adam, then rewiring
      (:func:`deep_r_train_step`).

    Args:
        method: ``"dense"``, ``"static"`` or ``"deep_r"``.
        learning_rate: Adam's learning rate (paper: 1e-3), used when ``optimizer`` is None.
        l1_strength: DEEP R's L1 strength ``C`` (paper: one of 0.01, 0.05, 0.1, 0.5), used
            when ``optimizer`` is None and ``method == "deep_r"``.
        optimizer: an explicit optax transformation instead of the default
            ``optax.adam(learning_rate)`` (chained after ``deep_r.l1(l1_strength)`` for DEEP
            R); for DEEP R, include ``deep_r.l1(C)`` in it yourself.
        rule: the e-prop rule (default ``eprop()``).
        dt: step size (ms).
        proposals_per_round: DEEP R regrowth proposals per round.
        max_rounds: DEEP R bound on regrowth rounds.

    Returns:
        A :class:`Trainer`.

    Raises:
        ValueError: an unknown ``method`` or a bad hyperparameter.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxplastic.models import recurrent_classifier
        >>> model = with_padding(recurrent_classifier(20, 3, n_hidden=16, p_in=0.2,
        ...                                           p_rec=0.2, key=jax.random.key(0)), 2.0)
        >>> train = trainer("deep_r", learning_rate=1e-3, l1_strength=0.01)
        >>> state = train.init(model, key=jax.random.key(1))
        >>> batch = (jnp.ones((4, 30, 20), jnp.uint8), jnp.array([0, 1, 2, 0]))
        >>> model, state, info = train.step(model, state, batch)
        >>> sorted(info._fields)
        ['accuracy', 'input', 'loss', 'rate_hz', 'recurrent']

    References:
        Bellec et al. (2018), Deep rewiring, ICLR. Knight, Senk & Nowotny (2025),
        arXiv:2510.19764.
    """
    if method not in METHODS:
        raise ValueError(f"trainer: method: expected one of {METHODS}, got {method!r}")
    if optimizer is None:
        if not (isinstance(learning_rate, int | float) and learning_rate > 0):
            raise ValueError(f"trainer: learning_rate: expected > 0, got {learning_rate!r}")
        optimizer = optax.adam(learning_rate)
        if method == "deep_r":
            optimizer = optax.chain(l1(l1_strength), optimizer)
    rule = eprop() if rule is None else rule

    if method == "deep_r":

        def init(model: RecurrentClassifier, *, key: PRNGKeyArray) -> TrainState:
            return init_deep_r(model, key=key, optimizer=optimizer)

        def step(model, state, batch):
            return deep_r_train_step(
                model,
                state,
                batch,
                optimizer=optimizer,
                rule=rule,
                dt=dt,
                proposals_per_round=proposals_per_round,
                max_rounds=max_rounds,
            )

    else:
        expected = DenseClassifier if method == "dense" else RecurrentClassifier

        def init(model: AbstractClassifier, *, key: PRNGKeyArray) -> TrainState:
            if not isinstance(model, expected):
                raise TypeError(
                    f"trainer({method!r}).init: model: expected a {expected.__name__}, "
                    f"got {type(model).__name__}"
                )
            return TrainState(optimizer.init(eqx.filter(model, eqx.is_inexact_array)), key)

        def step(model, state, batch):
            return _eprop_train_step(model, state, batch, optimizer=optimizer, rule=rule, dt=dt)

    return Trainer(method=method, optimizer=optimizer, init=init, step=step)
