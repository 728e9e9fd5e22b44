"""jaxplastic: spiking neural networks whose connectivity changes while they run."""

import importlib.metadata

from ._connectivity import (
    ColumnView as ColumnView,
    RaggedConnectivity as RaggedConnectivity,
    fixed_probability as fixed_probability,
    from_dense as from_dense,
    from_edges as from_edges,
)
from ._propagate import propagate as propagate

__version__ = importlib.metadata.version("jaxplastic")
