"""Learning rules: e-prop gradients for recurrent spiking classifiers, DEEP R rewiring."""

from . import deep_r as deep_r
from ._deep_r_train import (
    DeepRCounts as DeepRCounts,
    Trainer as Trainer,
    TrainInfo as TrainInfo,
    TrainState as TrainState,
    deep_r_train_step as deep_r_train_step,
    init_deep_r as init_deep_r,
    trainer as trainer,
    with_padding as with_padding,
)
from ._eprop import (
    Eprop as Eprop,
    EpropGradients as EpropGradients,
    EpropInfo as EpropInfo,
    EpropState as EpropState,
    ProjectionTraces as ProjectionTraces,
    eprop as eprop,
    train_step as train_step,
)
from ._experiment import (
    ClassifierConfig as ClassifierConfig,
    NonFiniteLossError as NonFiniteLossError,
    RunState as RunState,
    evaluate as evaluate,
    export_npz as export_npz,
    init_run as init_run,
    load_data as load_data,
    load_run as load_run,
    save_run as save_run,
    to_numpy as to_numpy,
    train_epochs as train_epochs,
)
