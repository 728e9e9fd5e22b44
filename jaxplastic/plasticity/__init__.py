"""Synaptic plasticity rules on ragged projections."""

from .stdp import (
    AdditiveSTDP as AdditiveSTDP,
    STDPTraces as STDPTraces,
    compact_spikes as compact_spikes,
    depress_rows as depress_rows,
    depress_rows_reference as depress_rows_reference,
    potentiate_columns as potentiate_columns,
    potentiate_columns_reference as potentiate_columns_reference,
)
