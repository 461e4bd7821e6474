"""Data: TFDS builders for the embedded tasks, their specs, and the input pipeline.

Importing this package registers the embedded datasets with TFDS (`pystdlib`, `textfile`,
`listops`, `pathfinder`, `seq2seq_digits`, `duplication`), so `tfds.builder(name)` finds them like
any TFDS dataset; `registry.DATASETS` maps each name to the spec beside its builder.
"""

from attnx.data import (
    duplication,
    generic,
    listops,
    pathfinder,
    pystdlib,
    registry,
    representations,
    seq2seq_digits,
    spec,
    textfile,
)
from attnx.data.pipeline import Dataset, build, default_data_config, describe
from attnx.data.spec import DataInfo, DatasetSpec, Feature, Served

__all__ = [
    "DataInfo",
    "Dataset",
    "DatasetSpec",
    "Feature",
    "Served",
    "build",
    "default_data_config",
    "describe",
    "duplication",
    "generic",
    "listops",
    "pathfinder",
    "pystdlib",
    "registry",
    "representations",
    "seq2seq_digits",
    "spec",
    "textfile",
]
