"""jaxplastic: spiking neural networks whose connectivity changes while they run."""

import importlib.metadata

from . import datasets as datasets, learning as learning, models as models, plasticity as plasticity
from ._checkpoint import (
    CheckpointError as CheckpointError,
    latest_checkpoint as latest_checkpoint,
    load_checkpoint as load_checkpoint,
    save_checkpoint as save_checkpoint,
)
from ._connectivity import (
    ColumnView as ColumnView,
    RaggedConnectivity as RaggedConnectivity,
    fixed_probability as fixed_probability,
    from_dense as from_dense,
    from_edges as from_edges,
)
from ._neurons import (
    ALIF as ALIF,
    LIF as LIF,
    AbstractSurrogate as AbstractSurrogate,
    ALIFState as ALIFState,
    ConductanceLIF as ConductanceLIF,
    ConductanceLIFState as ConductanceLIFState,
    LeakyIntegrator as LeakyIntegrator,
    LeakyIntegratorState as LeakyIntegratorState,
    LIFState as LIFState,
    PiecewiseLinear as PiecewiseLinear,
    PoissonInput as PoissonInput,
    PoissonInputState as PoissonInputState,
    SpikeArrayInput as SpikeArrayInput,
    SpikeArrayInputState as SpikeArrayInputState,
    SuperSpike as SuperSpike,
)
from ._propagate import propagate as propagate
from ._simulate import SimulationResult as SimulationResult, simulate as simulate
from ._structural import (
    RewireInfo as RewireInfo,
    RowUpdate as RowUpdate,
    RowView as RowView,
    add_synapses as add_synapses,
    remove_slots as remove_slots,
    remove_synapses as remove_synapses,
    reset_slots as reset_slots,
    update_rows as update_rows,
)

__version__ = importlib.metadata.version("jaxplastic")
