"""Checks that served batches hold what their `DataInfo` says, before a step runs on them.

`check_batch(info, batch, split, indices)` raises ValueError naming the feature, the split and the
example index for a feature of the wrong shape or dtype (per `info.features`), token ids outside
`[0, vocab_size)`, labels outside `[0, num_classes)`, and non-finite float values (images, clips,
weights). Shapes and dtypes cost nothing to check; the trainer checks values on the first batches.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attnx.data.spec import DataInfo

# The integer feature that holds class ids; every other integer feature holds token ids.
LABEL_FEATURE = "label"


def _where(feature: str, split: str, indices: np.ndarray, row: int) -> str:
    return f"feature {feature!r} of split {split!r}, example {int(indices[row])}"


def check_structure(info: DataInfo, batch: Mapping[str, np.ndarray], split: str,
                    indices: np.ndarray) -> None:
    """Every feature of `info` is present with its dtype and per-example shape."""
    for name, feature in info.features.items():
        if name not in batch:
            raise ValueError(f"feature {name!r} of split {split!r} is missing from the batch "
                             f"(it has {sorted(batch)})")
        x = np.asarray(batch[name])
        if x.shape[1:] != tuple(feature.shape) or x.shape[0] != len(indices):
            raise ValueError(f"{_where(name, split, indices, 0)}: batch shape {x.shape}, "
                             f"expected ({len(indices)}, *{tuple(feature.shape)}) (the dataset's "
                             "DataInfo.features)")
        if x.dtype != np.dtype(feature.dtype):
            raise ValueError(f"{_where(name, split, indices, 0)}: dtype {x.dtype}, expected "
                             f"{feature.dtype} (the dataset's DataInfo.features)")


def _first_bad_row(bad: np.ndarray) -> int | None:
    rows = bad.reshape(bad.shape[0], -1).any(axis=1)
    return int(np.argmax(rows)) if rows.any() else None


def check_values(info: DataInfo, batch: Mapping[str, np.ndarray], split: str,
                 indices: np.ndarray) -> None:
    """Token ids within the vocabulary, labels within the classes, float values finite."""
    for name in info.features:
        x = np.asarray(batch[name])
        if np.issubdtype(x.dtype, np.floating):
            row = _first_bad_row(~np.isfinite(x))
            if row is not None:
                raise ValueError(f"{_where(name, split, indices, row)}: holds non-finite values "
                                 f"(NaN or inf)")
            continue
        if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.integer):
            continue
        limit, what = ((info.num_classes, "classes") if name == LABEL_FEATURE
                       else (info.vocab_size, "vocabulary"))
        if limit is None:
            continue
        row = _first_bad_row((x < 0) | (x >= limit))
        if row is not None:
            values = x[row][(x[row] < 0) | (x[row] >= limit)]
            raise ValueError(f"{_where(name, split, indices, row)}: value {int(values.flat[0])} "
                             f"is outside the {what} [0, {limit})")


def check_batch(info: DataInfo, batch: Mapping[str, np.ndarray], split: str,
                indices: np.ndarray, *, values: bool = True) -> None:
    """`check_structure`, and `check_values` if `values` (see the module docstring)."""
    check_structure(info, batch, split, indices)
    if values:
        check_values(info, batch, split, indices)
