"""`textfile`: any local file or directory as a byte-level corpus (how a user trains on enwik8).

The bytes of the file (or of the directory's regular files, hidden ones skipped, in sorted path
order) form one stream that is cut contiguously into train/validation/test at 90/5/5 of its length.
Each split is stored as consecutive pieces of at most `CHUNK_BYTES` that never cross a file
boundary, `{'text': bytes, 'path': str, 'offset': int}` (`path` relative to the directory, or the
file name; `offset` into that file), in stream order, so concatenating a split's examples gives its
bytes back.

The builder config is named after the path and a hash of the absolute path and each file's
relative path, size and modification time, so two paths, or one file before and after an edit,
are prepared into different directories and never mixed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from attnx.data import representations
from attnx.data.spec import DatasetSpec, check_no_builder_config

CHUNK_BYTES = 1 << 20
# The fewest bytes that leave every split non-empty.
MIN_BYTES = 20
# Fractions of the stream at which validation and test start.
_SPLIT_STARTS = (("train", 0.0), ("validation", 0.90), ("test", 0.95))


def list_files(path: str) -> list[tuple[str, str]]:
    """Sorted `(relative_path, absolute_path)` of the file at `path` or the regular files under it.

    Raises:
      ValueError: `path` does not exist.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(path):
        return [(os.path.basename(path), path)]
    if not os.path.isdir(path):
        raise ValueError(f"data.path {path!r} does not exist (expected a file or a directory)")
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            full = os.path.join(dirpath, filename)
            if not filename.startswith(".") and os.path.isfile(full):
                files.append((os.path.relpath(full, path).replace(os.sep, "/"), full))
    return sorted(files)


class TextfileConfig(tfds.core.BuilderConfig):
    """Config for one path, named `<basename>_<hash of path, file names, sizes, mtimes>`."""

    def __init__(self, path: str) -> None:
        path = os.path.abspath(os.path.expanduser(path))
        digest = hashlib.sha256(path.encode())
        total = 0
        for relative_path, full in list_files(path):
            stat = os.stat(full)
            digest.update(f"\n{relative_path} {stat.st_size} {stat.st_mtime_ns}".encode())
            total += stat.st_size
        if total < MIN_BYTES:
            raise ValueError(
                f"data.path {path!r} holds {total} bytes; textfile needs at least {MIN_BYTES} "
                "to split it 90/5/5"
            )
        stem = re.sub(r"[^\w\-.]", "_", os.path.basename(path.rstrip(os.sep)))[:40] or "root"
        super().__init__(name=f"{stem}_{digest.hexdigest()[:16]}", description=f"bytes of {path}")
        self.path = path


def _pieces(
    files: list[tuple[str, str]], start: int, stop: int
) -> Iterator[tuple[str, str, int, int]]:
    """`(relative_path, absolute_path, offset, size)` pieces covering bytes [start, stop) of the
    stream, cut at file boundaries and every `CHUNK_BYTES`."""
    file_start = 0
    for relative_path, full in files:
        file_stop = file_start + os.path.getsize(full)
        lo, hi = max(start, file_start), min(stop, file_stop)
        for offset in range(lo - file_start, hi - file_start, CHUNK_BYTES):
            yield relative_path, full, offset, min(CHUNK_BYTES, hi - file_start - offset)
        file_start = file_stop


class Textfile(tfds.core.GeneratorBasedBuilder):
    """The bytes of a local file or directory, split 90/5/5 contiguously."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Contiguous 90/5/5 byte split in pieces of at most 1 MiB."}

    def __init__(
        self, *, path: str | None = None, config: TextfileConfig | None = None, **kwargs
    ) -> None:
        if config is None:
            if path is None:
                raise ValueError("textfile needs data.path: the file or directory to read")
            config = TextfileConfig(path)
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "path": tfds.features.Text(),
                    "offset": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(path=self.builder_config.path),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Everything is local.
        files = list_files(self.builder_config.path)
        total = sum(os.path.getsize(full) for _, full in files)
        bounds = [int(total * fraction) for _, fraction in _SPLIT_STARTS] + [total]
        return {
            split: self._generate_examples(files, bounds[i], bounds[i + 1])
            for i, (split, _) in enumerate(_SPLIT_STARTS)
        }

    def _generate_examples(
        self, files: list[tuple[str, str]], start: int, stop: int
    ) -> Iterator[tuple[int, dict]]:
        for key, (relative_path, full, offset, size) in enumerate(_pieces(files, start, stop)):
            with open(full, "rb") as f:
                f.seek(offset)
                yield key, {"text": f.read(size), "path": relative_path, "offset": offset}


def _builder(config: ml_collections.ConfigDict) -> Textfile:
    """The builder of `data.path` (`data.builder_config` must be None).

    Raises:
      ValueError: `data.path` is None, does not exist or holds too few bytes.
    """
    check_no_builder_config(config, "textfile", "data.path")
    if config.path is None:
        raise ValueError("data.path must name a file or directory for data.name='textfile'")
    return Textfile(path=config.path, data_dir=config.data_dir)


# Served as a byte-level LM (the pieces concatenated give the split's bytes back).
SPEC = DatasetSpec(
    builder=_builder, representations={"tokens": representations.byte_lm(b"")}, default="tokens"
)
