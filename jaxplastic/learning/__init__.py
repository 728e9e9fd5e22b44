"""Learning rules: e-prop gradients for recurrent spiking classifiers, DEEP R rewiring."""

from . import deep_r as deep_r
from ._eprop import (
    Eprop as Eprop,
    EpropGradients as EpropGradients,
    EpropInfo as EpropInfo,
    EpropState as EpropState,
    ProjectionTraces as ProjectionTraces,
    eprop as eprop,
    train_step as train_step,
)
