"""Datasets by name, so that a config can say `data.name='listops'`.

Each embedded dataset's module holds its TFDS builder and, beside it, its `SPEC` (`spec.py`): how
the builder is made from `config.data`, the representations it can be served in and how each
one's `DataInfo` and rows are built. Any other name that TFDS knows is served by `generic.SPEC`.
Adding a dataset is its builder module and one line in `DATASETS`.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from attnx.data import (
    digit_qa,
    duplication,
    generic,
    listops,
    moving_digits,
    pathfinder,
    pystdlib,
    seq2seq_digits,
    sklearn_digits,
    textfile,
)
from attnx.data.spec import DatasetSpec

DATASETS: dict[str, DatasetSpec] = {
    "pystdlib": pystdlib.SPEC,
    "textfile": textfile.SPEC,
    "listops": listops.SPEC,
    "pathfinder": pathfinder.SPEC,
    "seq2seq_digits": seq2seq_digits.SPEC,
    "duplication": duplication.SPEC,
    "sklearn_digits": sklearn_digits.SPEC,
    "digit_qa": digit_qa.SPEC,
    "moving_digits": moving_digits.SPEC,
}


def names() -> list[str]:
    """The embedded datasets' names, sorted."""
    return sorted(DATASETS)


def _known_to_tfds(name: str) -> bool:
    """Whether TFDS has a builder `name`; its legacy video builders (ucf101, ...) are listed only
    once their package is imported."""
    if name in tfds.list_builders(with_community_datasets=False):
        return True
    import tensorflow_datasets.video  # noqa: F401

    return name in tfds.list_builders(with_community_datasets=False)


def get(name: str) -> DatasetSpec:
    """The spec of dataset `name`: an embedded one, or `generic.SPEC` for a TFDS dataset name.

    Raises:
      ValueError: a name neither embedded nor known to TFDS (the embedded names are listed), or
        an embedded name with a config or version attached ('listops/tiny').
    """
    if name in DATASETS:
        return DATASETS[name]
    base = name.split("/")[0].split(":")[0]
    if base in DATASETS:
        raise ValueError(
            f"data.name={name!r}: name the embedded dataset alone, data.name={base!r}, and its "
            "builder config in data.builder_config"
        )
    if not _known_to_tfds(base):
        raise ValueError(
            f"unknown dataset data.name={name!r}: expected one of the embedded datasets "
            f"{names()} or a TFDS dataset name (see tfds.list_builders())"
        )
    return generic.SPEC
