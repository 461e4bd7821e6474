"""Data: TFDS builders for the embedded tasks and the input pipeline.

Importing this package registers the embedded datasets with TFDS (`pystdlib`, `textfile`,
`listops`, `pathfinder`, `seq2seq_digits`, `duplication`), so `tfds.builder(name)` finds them like any TFDS
dataset.
"""

from attnx.data import duplication, listops, pathfinder, pystdlib, seq2seq_digits, textfile
from attnx.data.pipeline import EMBEDDED, DataInfo, Dataset, build, default_data_config

__all__ = [
    "EMBEDDED",
    "DataInfo",
    "Dataset",
    "build",
    "default_data_config",
    "duplication",
    "listops",
    "pathfinder",
    "pystdlib",
    "seq2seq_digits",
    "textfile",
]
