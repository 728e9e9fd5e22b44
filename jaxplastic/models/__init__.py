"""Complete models built on the library: the e-prop classifiers and the topographic map."""

from ._classifier import (
    AbstractClassifier as AbstractClassifier,
    ClassifierOutput as ClassifierOutput,
    ClassifierState as ClassifierState,
    DenseClassifier as DenseClassifier,
    RecurrentClassifier as RecurrentClassifier,
    accuracy as accuracy,
    dense_classifier as dense_classifier,
    recurrent_classifier as recurrent_classifier,
)
from ._topographic import (
    ChunkRecord as ChunkRecord,
    MapQuality as MapQuality,
    RewiringCounts as RewiringCounts,
    RewiringSource as RewiringSource,
    TopographicMap as TopographicMap,
    TopographicState as TopographicState,
    bamford_rewire as bamford_rewire,
    connection_stats as connection_stats,
    displacement_maps as displacement_maps,
    distance_dependent_connectivity as distance_dependent_connectivity,
    expected_degree as expected_degree,
    map_quality as map_quality,
    run_topographic as run_topographic,
)
