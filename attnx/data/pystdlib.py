"""`pystdlib`: a byte-level corpus of the running Python's standard-library `.py` files.

One example per file, `{'text': bytes, 'path': str}` with `path` relative to the stdlib root, split
by a hash of that path into train/validation/test (about 90/5/5), so a file's split never depends on
which other files exist. The content differs between Python builds (Debian's 3.11 ships far fewer
files than a full CPython build), so the builder config is named after a fingerprint of the running
Python (its version and a hash of the file list with sizes), e.g. `py3.11.7_0123456789ab`: data
prepared by another Python lands in another directory and is never mixed in. The dataset metadata
records the version, the full hash, the file count and the stdlib root.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from collections.abc import Iterator

import ml_collections
import tensorflow_datasets as tfds

from attnx.data import representations
from attnx.data.spec import DatasetSpec, check_no_builder_config

# Percent buckets of sha256(relative path) mod 100: [0, 90) train, [90, 95) validation, rest test.
_SPLIT_BUCKETS = (("train", 90), ("validation", 95), ("test", 100))
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_root() -> str:
    """The running Python's standard-library directory."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_files() -> list[tuple[str, str]]:
    """Sorted `(relative_path, absolute_path)` of the stdlib's `.py` files (site-packages,
    dist-packages and __pycache__ excluded)."""
    root = stdlib_root()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
        for filename in filenames:
            if filename.endswith(".py"):
                path = os.path.join(dirpath, filename)
                files.append((os.path.relpath(path, root).replace(os.sep, "/"), path))
    return sorted(files)


def split_of(relative_path: str) -> str:
    """The split ('train', 'validation' or 'test') a file belongs to, from a hash of its path."""
    bucket = int.from_bytes(hashlib.sha256(relative_path.encode()).digest()[:8], "big") % 100
    return next(split for split, end in _SPLIT_BUCKETS if bucket < end)


def python_version() -> str:
    """`'<implementation> <x.y.z>'` of the running Python, e.g. 'CPython 3.11.7'."""
    return f"{platform.python_implementation()} {platform.python_version()}"


def file_list_sha256(files: list[tuple[str, str]]) -> str:
    """sha256 over the sorted `relative_path size` lines of `files`."""
    digest = hashlib.sha256()
    for relative_path, path in files:
        digest.update(f"{relative_path} {os.path.getsize(path)}\n".encode())
    return digest.hexdigest()


class PystdlibConfig(tfds.core.BuilderConfig):
    """Config named after the Python that generates it; carries the fingerprint it was made from."""

    def __init__(self, *, python_version: str, file_list_sha256: str, num_files: int) -> None:
        version = python_version.split()[-1]
        super().__init__(
            name=f"py{version}_{file_list_sha256[:12]}",
            description=f"stdlib .py files of {python_version} ({num_files} files)",
        )
        self.python_version = python_version
        self.file_list_sha256 = file_list_sha256
        self.num_files = num_files


def current_config() -> PystdlibConfig:
    """The config of the running Python's standard library (recomputed on every call)."""
    files = stdlib_files()
    return PystdlibConfig(
        python_version=python_version(),
        file_list_sha256=file_list_sha256(files),
        num_files=len(files),
    )


class Pystdlib(tfds.core.GeneratorBasedBuilder):
    """The running Python's standard library as a byte-level text corpus."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One example per stdlib .py file, split 90/5/5 by path hash."}

    def __init__(self, *, config: str | PystdlibConfig | None = None, **kwargs) -> None:
        super().__init__(config=config or current_config(), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "path": tfds.features.Text()}
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                python_version=config.python_version,
                file_list_sha256=config.file_list_sha256,
                num_files=config.num_files,
                stdlib_root=stdlib_root(),
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Everything is local.
        files = stdlib_files()
        if file_list_sha256(files) != self.builder_config.file_list_sha256:
            raise RuntimeError(
                "the standard library changed while pystdlib was being prepared; run again"
            )
        return {
            split: self._generate_examples([f for f in files if split_of(f[0]) == split])
            for split, _ in _SPLIT_BUCKETS
        }

    def _generate_examples(self, files: list[tuple[str, str]]) -> Iterator[tuple[str, dict]]:
        for relative_path, path in files:
            with open(path, "rb") as f:
                yield relative_path, {"text": f.read(), "path": relative_path}


def _builder(config: ml_collections.ConfigDict) -> Pystdlib:
    """The builder of the running Python's library (`data.builder_config` must be None)."""
    check_no_builder_config(config, "pystdlib", "the running Python")
    return Pystdlib(data_dir=config.data_dir)


# Served as a byte-level LM (documents concatenated as they are).
SPEC = DatasetSpec(
    builder=_builder, representations={"tokens": representations.byte_lm(b"")}, default="tokens"
)
