"""Training and simulation on several devices: data-parallel training (batch split, network
replicated) and model-parallel topographic maps (target neurons split)."""

from ._data_parallel import (
    data_mesh as data_mesh,
    data_parallel as data_parallel,
    data_parallel_rule as data_parallel_rule,
    data_parallel_trainer as data_parallel_trainer,
    replicate as replicate,
    shard_batch as shard_batch,
)
from ._model_parallel import (
    ShardedAfferent as ShardedAfferent,
    ShardedTopographicMap as ShardedTopographicMap,
    ShardedTopographicState as ShardedTopographicState,
)
