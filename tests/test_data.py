"""Tests of attnx.data: the embedded TFDS builders and the input pipeline (no TensorFlow)."""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from attnx import data
from attnx.data import listops, pystdlib, seq2seq_digits, textfile

SPLITS = ("train", "validation", "test")


# ----------------------------------------------------------------------------- helpers


def examples(builder: tfds.core.DatasetBuilder, split: str) -> list[dict]:
    source = builder.as_data_source(split)
    return [source[i] for i in range(len(source))]


def prepared(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
    builder.download_and_prepare(file_format="array_record")
    return builder


def evaluate_listops(text: str) -> tuple[int, int, int]:
    """Independent recursive-descent evaluator of LRA's textual ListOps.

    Returns (value, operator nesting depth, most arguments of one operator)."""
    tokens = text.split()
    position = 0
    semantics = {
        "[MIN": min,
        "[MAX": max,
        "[MED": lambda args: int(statistics.median(args)),
        "[SM": lambda args: sum(args) % 10,
    }

    def expression() -> tuple[int, int, int]:
        nonlocal position
        token = tokens[position]
        position += 1
        if token.isdigit():
            assert len(token) == 1
            return int(token), 0, 0
        values, depth, width = [], 0, 0
        while tokens[position] != "]":
            value, sub_depth, sub_width = expression()
            values.append(value)
            depth, width = max(depth, sub_depth), max(width, sub_width)
        position += 1
        return semantics[token](values), depth + 1, max(width, len(values))

    result = expression()
    assert position == len(tokens), f"trailing tokens in {text!r}"
    return result


def stream_of(ds: data.Dataset, split: str, batch_size: int = 8) -> bytes:
    """The bytes an LM eval pass covers: each window's first input, then its weighted targets."""
    out = bytearray()
    for batch in ds.eval_batches(split, global_batch_size=batch_size):
        for inputs, targets, weights in zip(batch["inputs"], batch["targets"], batch["weights"]):
            if weights.any():
                out.append(inputs[0])
                out.extend(targets[weights > 0].astype(np.uint8).tobytes())
    return bytes(out)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def listops_tiny(data_dir: str) -> data.Dataset:
    config = data.default_data_config(
        name="listops", builder_config="tiny", data_dir=data_dir, seq_len=128
    )
    return data.build(config, seed=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """A 6,100-byte file of pseudo-random bytes (all 256 values occur)."""
    content = np.random.default_rng(0).integers(0, 256, 6100, dtype=np.uint8).tobytes()
    path = tmp_path_factory.mktemp("corpus") / "corpus.bin"
    path.write_bytes(content)
    return str(path), content


@pytest.fixture(scope="module")
def textfile_lm(corpus: tuple[str, bytes], data_dir: str) -> data.Dataset:
    config = data.default_data_config(
        name="textfile", path=corpus[0], data_dir=data_dir, seq_len=16
    )
    return data.build(config, seed=0)


# ----------------------------------------------------------------------------- config, info


def test_default_data_config_fields_and_types():
    config = data.default_data_config(name="listops", builder_config="tiny")
    expected = {
        "name", "builder_config", "representation", "data_dir", "path", "seq_len", "target_len",
        "num_frames", "train_split", "eval_split", "test_split", "text_key", "label_key",
        "image_key", "num_classes", "image_size", "randaugment_layers", "randaugment_magnitude",
        "dihedral_augment",
    }
    assert set(config.keys()) == expected
    assert (config.name, config.builder_config, config.path) == ("listops", "tiny", None)
    assert (config.representation, config.num_frames) == (None, None)
    config.target_len = 12  # None-able fields are typed and stay overridable.
    config.num_classes = 3
    config.representation = "image"
    config.num_frames = 8
    config.image_size = 224
    with pytest.raises(TypeError):
        config.target_len = "long"
    with pytest.raises(TypeError):
        config.representation = 3
    with pytest.raises(ValueError, match="seq_length"):
        data.default_data_config(seq_length=4)


def lm_features(seq_len: int) -> dict[str, data.Feature]:
    """The features of 'lm' batches, written out independently of the pipeline's helpers."""
    return {"inputs": data.Feature("int32", (seq_len,)),
            "targets": data.Feature("int32", (seq_len,)),
            "weights": data.Feature("float32", (seq_len,))}


def classification_features(seq_len: int) -> dict[str, data.Feature]:
    return {"inputs": data.Feature("int32", (seq_len,)), "mask": data.Feature("bool", (seq_len,)),
            "label": data.Feature("int32", ()), "weights": data.Feature("float32", ())}


def assert_batch_matches_info(batch: dict[str, np.ndarray], info: data.DataInfo, rows: int):
    """Every key of `batch` is declared in `info.features` with its dtype and per-example shape,
    and every declared feature is in the batch."""
    assert set(batch) == set(info.features)
    for key, feature in info.features.items():
        assert batch[key].dtype == np.dtype(feature.dtype), key
        assert batch[key].shape == (rows, *feature.shape), key


def test_data_info_has_named_fields_and_checks_its_features():
    with pytest.raises(TypeError):
        data.DataInfo("lm", lm_features(8))  # keyword-only
    info = data.DataInfo(kind="lm", features=lm_features(8), vocab_size=256, pad_id=0, seq_len=8)
    assert (info.num_classes, info.target_len, info.image_shape, info.clip_shape) == (
        None, None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.kind = "seq2seq"
    with pytest.raises(ValueError, match="kind must be one of.*'video_classification'"):
        data.DataInfo(kind="regression", features=lm_features(8))
    with pytest.raises(ValueError, match=r"'lm' DataInfo has the features \['inputs', "):
        data.DataInfo(kind="lm", features=classification_features(8))
    image = data.DataInfo(kind="image_classification", num_classes=10, features={
        "image": data.Feature("float32", (32, 32, 3)), "label": data.Feature("int32", ()),
        "weights": data.Feature("float32", ())})
    assert (image.image_shape, image.clip_shape, image.vocab_size) == ((32, 32, 3), None, None)
    video = data.DataInfo(kind="video_classification", num_classes=3, features={
        "video": data.Feature("float32", (4, 8, 8, 3)), "frame_mask": data.Feature("bool", (4,)),
        "label": data.Feature("int32", ()), "weights": data.Feature("float32", ())})
    assert (video.clip_shape, video.image_shape) == ((4, 8, 8, 3), None)


def test_encode_decode():
    info = data.DataInfo(kind="lm", features=lm_features(8), vocab_size=256, pad_id=0, seq_len=8)
    text = "héllo, wörld"
    ids = info.encode(text)
    assert ids.dtype == np.int32 and list(ids) == list(text.encode())
    assert info.decode(np.append(ids, [0, 0])) == text
    shifted = data.DataInfo(kind="classification", features=classification_features(8),
                            vocab_size=257, pad_id=0, num_classes=2, seq_len=8, byte_offset=1)
    assert list(shifted.encode("ab")) == [98, 99] and shifted.decode(np.array([98, 99, 0])) == "ab"
    symbols = data.DataInfo(kind="classification", features=classification_features(8),
                            vocab_size=16, pad_id=0, num_classes=10, seq_len=8,
                            vocab=listops.VOCAB, separator=" ")
    expression = "[MAX 2 9 [MIN 4 7 ] 0 ]"
    assert list(symbols.encode(expression)) == [12, 3, 10, 11, 5, 8, 15, 1, 15]
    assert symbols.decode(np.append(symbols.encode(expression), 0)) == expression
    with pytest.raises(ValueError, match="MUL"):
        symbols.encode("[MUL 2 3 ]")
    seq2seq = {"inputs": data.Feature("int32", (8,)), "inputs_mask": data.Feature("bool", (8,)),
               "decoder_inputs": data.Feature("int32", (9,)),
               "targets": data.Feature("int32", (9,)), "weights": data.Feature("float32", (9,))}
    digits = data.DataInfo(kind="seq2seq", features=seq2seq, vocab_size=13, pad_id=0, seq_len=8,
                           target_len=9, bos_id=1, eos_id=2, vocab=seq2seq_digits.VOCAB)
    assert list(digits.encode("3107")) == [6, 4, 3, 10]
    assert digits.decode(np.array([1, 6, 4, 2, 9, 0])) == "31"  # BOS dropped, stops at EOS.


# ----------------------------------------------------------------------------- listops


@pytest.mark.parametrize(
    "text, value",
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 4 7 ]", 4),
        ("[MED 1 2 ]", 1),  # Even count: the mean of the middle two, rounded down.
        ("[MED 1 5 ]", 3),
        ("[MED 3 [MAX 1 8 ] 2 6 ]", 4),  # Median of 2 3 6 8 = 4.5.
        ("[MED 9 0 4 ]", 4),
        ("[SM 5 7 [MIN 3 4 ] ]", 5),
        ("[SM 9 9 9 9 9 9 9 9 9 9 ]", 0),
    ],
)
def test_listops_hand_cases(text: str, value: int):
    assert evaluate_listops(text)[0] == value
    # The generator's semantics, applied bottom-up by hand to the same expression.
    operators = [t for t in text.split() if t in listops.OPERATORS]
    if len(operators) == 1:
        args = [int(t) for t in text.split() if t.isdigit()]
        assert listops.apply_operator(operators[0], args) == value


def test_listops_median_matches_lra_definition():
    rng = np.random.default_rng(1)
    for _ in range(200):
        args = rng.integers(0, 10, rng.integers(2, 11)).tolist()
        assert listops.apply_operator("[MED", args) == int(np.median(args))


def test_listops_examples_obey_the_task(listops_tiny: data.Dataset, data_dir: str):
    config = tfds.builder("listops", config="tiny", data_dir=data_dir).builder_config
    sizes = dict(zip(SPLITS, (config.num_train, config.num_validation, config.num_test)))
    texts = set()
    labels = []
    for split in SPLITS:
        # Read back through tfds.data_source, as a user of the prepared dataset would.
        source = tfds.data_source("listops/tiny", split=split, data_dir=data_dir, download=False)
        records = [source[i] for i in range(len(source))]
        assert len(records) == sizes[split]
        for record in records:
            text = record["text"].decode()
            tokens = text.split()
            assert set(tokens) <= set(listops.VOCAB[1:])
            assert config.min_length <= len(tokens) <= config.max_length
            value, depth, width = evaluate_listops(text)
            assert record["label"] == value
            assert 1 <= depth <= config.max_depth - 1 and 2 <= width <= config.max_args
            texts.add(text)
            labels.append(value)
    assert len(texts) == sum(sizes.values())  # No duplicates, within or across splits.
    assert set(labels) == set(range(10))


def test_listops_batches_encode_the_examples(listops_tiny: data.Dataset, data_dir: str):
    info = listops_tiny.info
    assert (info.kind, info.vocab_size, info.num_classes, info.seq_len) == (
        "classification", 16, 10, 128,
    )
    records = examples(tfds.builder("listops", config="tiny", data_dir=data_dir), "validation")
    batch = next(listops_tiny.eval_batches("validation", global_batch_size=4))
    for row in range(4):
        text = records[row]["text"].decode()
        n = len(text.split())
        assert info.decode(batch["inputs"][row]) == text
        assert batch["mask"][row].tolist() == [True] * n + [False] * (128 - n)
        assert (batch["inputs"][row, n:] == 0).all()
        assert batch["label"][row] == evaluate_listops(text)[0]
    assert batch["inputs"].dtype == np.int32 and batch["label"].dtype == np.int32


def test_listops_seq_len_shorter_than_expressions_is_rejected(data_dir: str):
    config = data.default_data_config(
        name="listops", builder_config="tiny", data_dir=data_dir, seq_len=64
    )
    with pytest.raises(ValueError, match="data.seq_len=64"):
        data.build(config, seed=0)
    with pytest.raises(ValueError, match=r"\['lra', 'small', 'tiny'\]"):
        data.build(data.default_data_config(name="listops", builder_config="huge"), seed=0)


# ----------------------------------------------------------------------------- determinism


def test_generated_builders_are_deterministic(tmp_path, listops_tiny: data.Dataset, data_dir: str):
    small = seq2seq_digits.Seq2seqDigitsConfig(
        name="test_sort", transform="sort", num_train=300, num_validation=50, num_test=50
    )
    pairs = [
        (
            tfds.builder("listops", config="tiny", data_dir=data_dir),
            prepared(listops.Listops(config="tiny", data_dir=str(tmp_path / "a"))),
        ),
        (
            prepared(seq2seq_digits.Seq2seqDigits(config=small, data_dir=str(tmp_path / "b"))),
            prepared(seq2seq_digits.Seq2seqDigits(config=small, data_dir=str(tmp_path / "c"))),
        ),
    ]
    for first, second in pairs:
        for split in SPLITS:
            assert examples(first, split) and examples(first, split) == examples(second, split)
    other_seed = seq2seq_digits.Seq2seqDigitsConfig(
        name="test_sort_seed1", transform="sort", num_train=300, num_validation=50, num_test=50,
        seed=1,
    )
    reseeded = prepared(seq2seq_digits.Seq2seqDigits(config=other_seed, data_dir=str(tmp_path)))
    assert examples(reseeded, "train") != examples(pairs[1][0], "train")


def test_processes_starting_at_once_share_one_preparation(tmp_path):
    code = (
        "import sys; from attnx import data; "
        "config = data.default_data_config(name='listops', builder_config='tiny', "
        "data_dir=sys.argv[1], seq_len=128); "
        "print(data.build(config, seed=0).train_batch(0, global_batch_size=8)['label'].tolist())"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate()[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert sum(out.count("attnx.data: preparing") for out in outputs) == 1
    assert outputs[0].splitlines()[-1] == outputs[1].splitlines()[-1]


# ----------------------------------------------------------------------------- pystdlib


@pytest.fixture(scope="module")
def stdlib_builder(data_dir: str) -> tfds.core.DatasetBuilder:
    return prepared(pystdlib.Pystdlib(data_dir=data_dir))


def test_pystdlib_splits_are_disjoint_stable_and_faithful(stdlib_builder, tmp_path):
    files = dict(pystdlib.stdlib_files())
    assert files and not any(
        part in ("site-packages", "dist-packages") for p in files for part in p.split("/")
    )
    seen = {}
    for split in SPLITS:
        records = examples(stdlib_builder, split)
        paths = [r["path"].decode() for r in records]
        assert paths == sorted(paths)
        for path in paths:
            assert path not in seen and pystdlib.split_of(path) == split
            seen[path] = split
        for record in records[:: max(1, len(records) // 20)]:
            with open(files[record["path"].decode()], "rb") as f:
                assert record["text"] == f.read()
    assert set(seen) == set(files)
    counts = [list(seen.values()).count(s) for s in SPLITS]
    assert counts[0] > 0.8 * len(files) and min(counts) > 0
    # Preparing again elsewhere gives the same examples.
    again = prepared(pystdlib.Pystdlib(data_dir=str(tmp_path)))
    for split in ("validation", "test"):
        assert examples(again, split) == examples(stdlib_builder, split)


def test_pystdlib_records_its_fingerprint(stdlib_builder, data_dir: str):
    metadata = stdlib_builder.info.metadata
    files = pystdlib.stdlib_files()
    assert metadata["python_version"] == pystdlib.python_version()
    assert pystdlib.python_version().endswith(
        ".".join(map(str, sys.version_info[:3]))
    )
    assert metadata["file_list_sha256"] == pystdlib.file_list_sha256(files)
    assert metadata["num_files"] == len(files)
    name = stdlib_builder.builder_config.name
    assert name.startswith(f"py{sys.version_info.major}.{sys.version_info.minor}.")
    assert metadata["file_list_sha256"][:12] in name
    # A fresh builder, as tfds.builder('pystdlib') makes it, finds the prepared data.
    assert tfds.builder("pystdlib", data_dir=data_dir).is_prepared()


def test_pystdlib_other_python_or_file_list_is_rebuilt(stdlib_builder, monkeypatch, data_dir):
    full_name = stdlib_builder.builder_config.name
    monkeypatch.setattr(pystdlib, "python_version", lambda: "CPython 3.11.999")
    other_python = pystdlib.Pystdlib(data_dir=data_dir)
    assert other_python.builder_config.name != full_name and not other_python.is_prepared()
    monkeypatch.undo()

    # 30 train files, 5 validation, 5 test: every split keeps some examples.
    files = pystdlib.stdlib_files()
    by_split = {s: [f for f in files if pystdlib.split_of(f[0]) == s] for s in SPLITS}
    subset = sorted(by_split["train"][:30] + by_split["validation"][:5] + by_split["test"][:5])
    monkeypatch.setattr(pystdlib, "stdlib_files", lambda: subset)
    config = data.default_data_config(name="pystdlib", data_dir=data_dir, seq_len=32)
    ds = data.build(config, seed=0)
    rebuilt = pystdlib.Pystdlib(data_dir=data_dir)
    assert rebuilt.is_prepared() and rebuilt.builder_config.name != full_name
    assert rebuilt.info.metadata["file_list_sha256"] == pystdlib.file_list_sha256(subset)
    paths = {r["path"].decode() for s in SPLITS for r in examples(rebuilt, s)}
    assert paths == {p for p, _ in subset}
    train = b"".join(r["text"] for r in examples(rebuilt, "train"))
    assert stream_of(ds, "train") == train
    monkeypatch.undo()
    # The full corpus is still there, untouched, under its own config.
    assert pystdlib.Pystdlib(data_dir=data_dir).builder_config.name == full_name
    assert len(examples(stdlib_builder, "train")) > len(paths)


# ----------------------------------------------------------------------------- textfile, LM


def test_textfile_splits_contiguously(textfile_lm: data.Dataset, corpus: tuple[str, bytes]):
    _, content = corpus
    n = len(content)
    a, b = int(0.90 * n), int(0.95 * n)
    assert stream_of(textfile_lm, "train") == content[:a]
    assert stream_of(textfile_lm, "validation") == content[a:b]
    assert stream_of(textfile_lm, "test") == content[b:]
    info = textfile_lm.info
    assert (info.kind, info.vocab_size, info.pad_id, info.seq_len) == ("lm", 256, 0, 16)


def test_textfile_directory_and_keying(tmp_path, corpus: tuple[str, bytes], data_dir: str):
    path, content = corpus
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_bytes(b"second file\n" * 10)
    (folder / "sub" / "a.txt").write_bytes(b"first file\n" * 10)
    (folder / ".hidden").write_bytes(b"skipped")
    builder = prepared(textfile.Textfile(path=str(folder), data_dir=data_dir))
    joined = b"".join(r["text"] for s in SPLITS for r in examples(builder, s))
    assert joined == b"second file\n" * 10 + b"first file\n" * 10  # Sorted: b.txt < sub/a.txt.
    # Prepared data is keyed by path, size and mtime.
    names = {textfile.TextfileConfig(p).name for p in (path, str(folder), str(folder / "b.txt"))}
    assert len(names) == 3
    before = textfile.TextfileConfig(str(folder)).name
    (folder / "b.txt").write_bytes(b"edited")
    assert textfile.TextfileConfig(str(folder)).name != before
    with pytest.raises(ValueError, match="does not exist"):
        data.build(data.default_data_config(name="textfile", path=str(tmp_path / "no")), seed=0)
    with pytest.raises(ValueError, match="data.path"):
        data.build(data.default_data_config(name="textfile"), seed=0)
    (tmp_path / "short.txt").write_bytes(b"tiny")
    with pytest.raises(ValueError, match="at least 20"):
        data.build(
            data.default_data_config(name="textfile", path=str(tmp_path / "short.txt")), seed=0
        )


def test_lm_windows_tile_the_stream(textfile_lm: data.Dataset, corpus: tuple[str, bytes]):
    _, content = corpus
    train = np.frombuffer(content[: int(0.9 * len(content))], np.uint8)
    width = 17
    num_windows = len(train) // width
    # Batch size 6 does not divide the window count: epochs straddle batches.
    rows = {"inputs": [], "targets": [], "weights": []}
    for position in range(-(-num_windows // 6)):
        batch = textfile_lm.train_batch(position, global_batch_size=6)
        for key in rows:
            rows[key].append(batch[key])
    inputs, targets, weights = (np.concatenate(rows[k])[:num_windows] for k in rows)
    assert inputs.dtype == np.int32 and weights.dtype == np.float32 and (weights == 1).all()
    assert (inputs[:, 1:] == targets[:, :-1]).all()  # Targets are inputs shifted by one.
    windows = np.concatenate([inputs, targets[:, -1:]], axis=1)
    expected = train[: num_windows * width].reshape(num_windows, width)
    # The first epoch visits every window exactly once.
    assert sorted(map(bytes, windows.astype(np.uint8))) == sorted(map(bytes, expected))
    # Eval: the windows in order, the last one partial with weight-0 padding.
    batches = list(textfile_lm.eval_batches("train", global_batch_size=16))
    weights = np.concatenate([b["weights"] for b in batches])
    assert weights.sum() == len(train) - (num_windows + 1)
    assert weights[num_windows].sum() == len(train) - num_windows * width - 1
    assert not weights[num_windows + 1 :].any()


def test_lm_train_split_shorter_than_a_window_is_rejected(corpus, data_dir):
    config = data.default_data_config(
        name="textfile", path=corpus[0], data_dir=data_dir, seq_len=6000
    )
    with pytest.raises(ValueError, match="data.seq_len"):
        data.build(config, seed=0)


# ----------------------------------------------------------------------------- train stream


def test_train_batches_deterministic_and_resumable(listops_tiny: data.Dataset, data_dir: str):
    config = data.default_data_config(
        name="listops", builder_config="tiny", data_dir=data_dir, seq_len=128
    )
    history = [listops_tiny.train_batch(p, global_batch_size=32) for p in range(6)]
    resumed = data.build(config, seed=0)
    for position in (5, 2):  # A fresh Dataset, read out of order, gives the same batches.
        batch = resumed.train_batch(position, global_batch_size=32)
        for key in batch:
            np.testing.assert_array_equal(batch[key], history[position][key])
    other_seed = data.build(config, seed=1).train_batch(0, global_batch_size=32)
    assert not np.array_equal(other_seed["inputs"], history[0]["inputs"])
    with pytest.raises(ValueError, match="position"):
        listops_tiny.train_batch(-1, global_batch_size=32)


def test_epochs_are_fresh_permutations(listops_tiny: data.Dataset, data_dir: str):
    records = examples(tfds.builder("listops", config="tiny", data_dir=data_dir), "train")
    index = {
        tuple(listops_tiny.info.encode(r["text"])): i for i, r in enumerate(records)
    }
    batch_size = 64  # Divides the 512 train examples: 8 batches per epoch.
    epochs = []
    for epoch in range(2):
        order = []
        for position in range(8 * epoch, 8 * epoch + 8):
            batch = listops_tiny.train_batch(position, global_batch_size=batch_size)
            for inputs, mask in zip(batch["inputs"], batch["mask"]):
                order.append(index[tuple(inputs[mask])])
        assert sorted(order) == list(range(len(records)))
        epochs.append(order)
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])


def test_process_slices_partition_the_global_batch(listops_tiny: data.Dataset):
    whole = listops_tiny.train_batch(3, global_batch_size=12)
    for count in (2, 3, 4):
        parts = [
            listops_tiny.train_batch(3, global_batch_size=12, process_index=i, process_count=count)
            for i in range(count)
        ]
        for key in whole:
            assert all(len(p[key]) == 12 // count for p in parts)
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    eval_whole = list(listops_tiny.eval_batches("test", global_batch_size=12))
    eval_parts = [
        list(listops_tiny.eval_batches("test", global_batch_size=12, process_index=i,
                                       process_count=3))
        for i in range(3)
    ]
    assert all(len(p) == len(eval_whole) for p in eval_parts)
    for b, batch in enumerate(eval_whole):
        for key in batch:
            np.testing.assert_array_equal(
                np.concatenate([p[b][key] for p in eval_parts]), batch[key]
            )
    with pytest.raises(ValueError, match="multiple of process_count"):
        listops_tiny.train_batch(0, global_batch_size=10, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        listops_tiny.train_batch(0, global_batch_size=12, process_index=3, process_count=3)


def test_eval_pass_covers_each_example_once(listops_tiny: data.Dataset, data_dir: str):
    records = examples(tfds.builder("listops", config="tiny", data_dir=data_dir), "validation")
    batches = list(listops_tiny.eval_batches("validation", global_batch_size=48))
    assert len(batches) == 3  # 128 examples: 48 + 48 + 32 real rows and 16 padding rows.
    weights = np.concatenate([b["weights"] for b in batches])
    assert weights.tolist() == [1.0] * 128 + [0.0] * 16
    inputs = np.concatenate([b["inputs"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert [listops_tiny.info.decode(x) for x in inputs[:128]] == [
        r["text"].decode() for r in records
    ]
    assert labels[:128].tolist() == [int(r["label"]) for r in records]
    assert not inputs[128:].any() and not np.concatenate([b["mask"] for b in batches])[128:].any()
    assert len(list(listops_tiny.eval_batches("validation", global_batch_size=48,
                                               max_batches=2))) == 2


# ----------------------------------------------------------------------------- seq2seq


def test_seq2seq_digits_batches(data_dir: str):
    config = data.default_data_config(
        name="seq2seq_digits", builder_config="reverse", data_dir=data_dir, seq_len=16
    )
    ds = data.build(config, seed=0)
    info = ds.info
    assert (info.kind, info.vocab_size, info.target_len, info.bos_id, info.eos_id) == (
        "seq2seq", 13, 17, 1, 2,
    )
    batch = ds.train_batch(0, global_batch_size=16)
    assert batch["decoder_inputs"].shape == batch["targets"].shape == (16, 17)
    assert (batch["decoder_inputs"][:, 0] == info.bos_id).all()
    # BOS + targets[:-1], where targets = digits + EOS: the EOS itself is never an input.
    shifted = np.where(batch["targets"] == info.eos_id, 0, batch["targets"])[:, :-1]
    np.testing.assert_array_equal(batch["decoder_inputs"][:, 1:], shifted)
    for row in range(16):
        source = info.decode(batch["inputs"][row])
        n = len(source)
        assert 4 <= n <= 16 and source.isdigit()
        assert info.decode(batch["targets"][row]) == source[::-1]
        assert batch["targets"][row, n] == info.eos_id
        assert batch["weights"][row].tolist() == [1.0] * (n + 1) + [0.0] * (16 - n)
        assert batch["inputs_mask"][row].tolist() == [True] * n + [False] * (16 - n)
    with pytest.raises(ValueError, match="data.target_len=16"):
        data.build(data.default_data_config(
            name="seq2seq_digits", builder_config="reverse", data_dir=data_dir, seq_len=16,
            target_len=16), seed=0)
    with pytest.raises(ValueError, match="data.seq_len=8"):
        data.build(data.default_data_config(
            name="seq2seq_digits", builder_config="reverse", data_dir=data_dir, seq_len=8), seed=0)


# ----------------------------------------------------------------------------- real TFDS names


def test_mock_text_classification_dataset_flows_through_build():
    config = data.default_data_config(name="imdb_reviews", eval_split="test", seq_len=24)
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.build(config, seed=0)
        source = tfds.builder("imdb_reviews").as_data_source("train")
        texts = {source[i]["text"].encode()[:24] for i in range(len(source))}
        batch = ds.train_batch(0, global_batch_size=4)
        eval_rows = sum(b["weights"].sum() for b in ds.eval_batches("test", global_batch_size=4))
    info = ds.info
    assert (info.kind, info.vocab_size, info.num_classes) == ("classification", 257, 2)
    assert batch["inputs"].shape == (4, 24) and set(batch["label"]) <= {0, 1}
    for inputs, mask in zip(batch["inputs"], batch["mask"]):
        assert (inputs[mask] - 1).astype(np.uint8).tobytes() in texts
        assert (inputs[~mask] == 0).all()
    assert eval_rows == 10


def test_mock_lm_dataset_flows_through_build():
    config = data.default_data_config(name="lm1b", seq_len=8)
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.build(config, seed=0)
        source = tfds.builder("lm1b").as_data_source("train")
        stream = b"".join(source[i]["text"].encode() + b"\n" for i in range(len(source)))
        batch = ds.train_batch(0, global_batch_size=2)
        covered = stream_of(ds, "train", batch_size=3)
    assert ds.info.kind == "lm" and batch["inputs"].shape == (2, 8)
    assert covered == stream
    for inputs, targets in zip(batch["inputs"], batch["targets"]):
        window = np.append(inputs, targets[-1]).astype(np.uint8).tobytes()
        assert window in stream


def test_mock_image_classification_dataset_flows_through_build():
    config = data.default_data_config(name="cifar10", eval_split="test", seq_len=1024)
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.build(config, seed=0)
        image = tfds.builder("cifar10").as_data_source("test")[0]["image"].astype(np.float64)
        batch = next(ds.eval_batches("test", global_batch_size=4))
    gray = 0.2989 * image[..., 0] + 0.5870 * image[..., 1] + 0.1140 * image[..., 2]
    expected = np.floor(gray + 0.5)  # Rounded half up, ties (exact in decimal) included.
    ties = np.abs(gray - np.floor(gray) - 0.5) < 1e-9
    expected[ties] = np.floor(gray[ties]) + 1
    np.testing.assert_array_equal(batch["inputs"][0], expected.reshape(-1) + 1)
    assert ds.info.num_classes == 10 and batch["mask"].all()


def test_unknown_dataset_name_or_feature_lists_the_valid_ones():
    with pytest.raises(ValueError, match="listops.*pystdlib.*seq2seq_digits.*textfile"):
        data.build(data.default_data_config(name="no_such_dataset"), seed=0)
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(ValueError, match=r"data.text_key='body'.*\['text'\]"):
            data.build(data.default_data_config(name="lm1b", text_key="body"), seed=0)
    with pytest.raises(ValueError, match="builder_config"):
        data.build(data.default_data_config(name="pystdlib", builder_config="x"), seed=0)


def test_data_imports_neither_models_nor_tensorflow():
    code = (
        "import sys, attnx.data; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'tensorflow' "
        "or m.startswith(('attnx.models', 'attnx.layers'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- specs, registry


def test_registry_has_one_spec_per_embedded_builder():
    assert data.registry.names() == [
        "digit_qa", "duplication", "listops", "moving_digits", "pathfinder", "pystdlib",
        "seq2seq_digits", "sklearn_digits", "textfile"]
    for name in data.registry.names():
        spec = data.registry.get(name)
        assert spec.default in spec.representations
        assert name in tfds.list_builders(with_community_datasets=False)
    assert set(data.registry.get("pathfinder").representations) == {"tokens", "image"}
    assert data.registry.get("cifar10") is data.generic.SPEC
    assert data.registry.get("ucf101") is data.generic.SPEC  # a legacy TFDS video builder
    assert set(data.generic.SPEC.representations) == {"tokens", "image", "video"}
    with pytest.raises(ValueError, match="data.name='listops'.*data.builder_config"):
        data.registry.get("listops/tiny")
    with pytest.raises(ValueError, match="default representation 'image'"):
        data.DatasetSpec(builder=tfds.builder, representations={"tokens": None}, default="image")


@pytest.mark.parametrize("name, builder_config, seq_len, kind, shapes", [
    ("listops", "tiny", 128, "classification", {"inputs": (128,), "label": ()}),
    ("seq2seq_digits", "reverse", 16, "seq2seq", {"inputs": (16,), "targets": (17,)}),
    ("duplication", "tiny", 32, "lm", {"inputs": (32,), "weights": (32,)}),
    ("pystdlib", None, 64, "lm", {"targets": (64,)}),
])
def test_embedded_batches_hold_what_their_info_declares(name, builder_config, seq_len, kind,
                                                       shapes, data_dir):
    config = data.default_data_config(name=name, builder_config=builder_config,
                                      data_dir=data_dir, seq_len=seq_len)
    ds = data.build(config, seed=0)
    assert ds.info.kind == kind
    assert {k: ds.info.features[k].shape for k in shapes} == shapes
    assert_batch_matches_info(ds.train_batch(1, global_batch_size=6), ds.info, 6)
    assert_batch_matches_info(next(ds.eval_batches("test", global_batch_size=4)), ds.info, 4)
    with pytest.raises(ValueError, match=(
            rf"data.representation='image' is not a representation of {name}; "
            r"expected one of \['tokens'\]")):
        data.build(data.default_data_config(name=name, builder_config=builder_config,
                                            data_dir=data_dir, seq_len=seq_len,
                                            representation="image"), seed=0)


# ----------------------------------------------------------------------------- images, clips


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_mock_image_dataset_as_images(name: str, shape: tuple[int, int, int]):
    config = data.default_data_config(name=name, eval_split="test", representation="image")
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.build(config, seed=0)
        source = tfds.builder(name).as_data_source("test")
        records = [source[i] for i in range(len(source))]
        batches = list(ds.eval_batches("test", global_batch_size=4))
        train = ds.train_batch(0, global_batch_size=3)
    info = ds.info
    assert (info.kind, info.image_shape, info.num_classes) == ("image_classification", shape, 10)
    assert (info.vocab_size, info.seq_len) == (None, None)
    images = np.concatenate([b["image"] for b in batches])
    for row, record in enumerate(records):
        pixels = np.asarray(record["image"])
        assert pixels.dtype == np.uint8 and pixels.shape == shape
        np.testing.assert_allclose(images[row], pixels / 255.0, rtol=1e-6)
        assert batches[row // 4]["label"][row % 4] == record["label"]
    assert not images[5:].any()
    assert np.concatenate([b["weights"] for b in batches]).tolist() == [1.0] * 5 + [0.0] * 3
    assert_batch_matches_info(batches[0], info, 4)
    assert_batch_matches_info(train, info, 3)
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_mock_datasets_reject_representations_and_features_they_lack():
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(ValueError, match=r"data.image_key='image' is not a feature of "
                                             r"imdb_reviews; features: \['label', 'text'\]"):
            data.build(data.default_data_config(name="imdb_reviews", representation="image"),
                       seed=0)
        with pytest.raises(ValueError, match=r"data.representation='pixels' is not a "
                                             r"representation of cifar10; expected one of "
                                             r"\['image', 'tokens', 'video'\]"):
            data.build(data.default_data_config(name="cifar10", representation="pixels"), seed=0)
        with pytest.raises(ValueError, match=r"'video' reads clips \[T, H, W, C\] but "
                                             r"data.image_key='image' of cifar10 has shape "
                                             r"\(32, 32, 3\)"):
            data.build(data.default_data_config(name="cifar10", representation="video"), seed=0)


class AttnxTestClips(tfds.core.GeneratorBasedBuilder):
    """Test-only video classification: clips `video` of 1-6 frames `[4, 6, 3]` uint8 (frame f of
    clip i is filled with 10 * i + f), and fixed 3-frame float clips `flow` `[3, 4, 6, 1]`."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=(None, 4, 6, 3), dtype=np.uint8),
                "flow": tfds.features.Tensor(shape=(3, 4, 6, 1), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=3),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager
        return {"train": self._generate_examples(7), "test": self._generate_examples(5)}

    def _generate_examples(self, n: int):
        for i in range(n):
            frames = 1 + i % 6
            video = (10 * i + np.arange(frames, dtype=np.uint8))[:, None, None, None]
            flow = np.linspace(0.0, 1.0, 72, dtype=np.float32).reshape(3, 4, 6, 1) * (i % 2)
            yield i, {"video": np.broadcast_to(video, (frames, 4, 6, 3)).copy(), "flow": flow,
                      "label": i % 3}


def clip_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    fields = dict(name="attnx_test_clips", data_dir=data_dir, eval_split="test",
                  representation="video", image_key="video", num_frames=4)
    return data.default_data_config(**{**fields, **overrides})


def test_clips_are_padded_to_num_frames_with_a_frame_mask(data_dir: str):
    ds = data.build(clip_config(data_dir), seed=0)
    info = ds.info
    assert (info.kind, info.clip_shape, info.num_classes) == (
        "video_classification", (4, 4, 6, 3), 3)
    batches = list(ds.eval_batches("test", global_batch_size=3))
    assert len(batches) == 2
    for b, batch in enumerate(batches):
        assert_batch_matches_info(batch, info, 3)
        for row in range(3):
            i = 3 * b + row
            if i >= 5:  # padding row
                assert batch["weights"][row] == 0 and not batch["frame_mask"][row].any()
                assert not batch["video"][row].any()
                continue
            frames = 1 + i % 6
            real = min(frames, 4)
            assert batch["frame_mask"][row].tolist() == [True] * real + [False] * (4 - real)
            expected = np.zeros((4, 4, 6, 3), np.float32)
            for f in range(real):
                expected[f] = (10 * i + f) / 255.0
            np.testing.assert_allclose(batch["video"][row], expected, rtol=1e-6)
            assert (batch["label"][row], batch["weights"][row]) == (i % 3, 1.0)
    # The first train epoch holds every clip once, those longer than 4 frames cut to their first.
    train = ds.train_batch(0, global_batch_size=7)
    assert_batch_matches_info(train, info, 7)
    first_values = np.round(train["video"][:, 0, 0, 0, 0] * 255).astype(int)
    assert sorted(first_values.tolist()) == [0, 10, 20, 30, 40, 50, 60]
    for row, value in enumerate(first_values):
        real = min(1 + (value // 10) % 6, 4)
        assert train["frame_mask"][row].sum() == real
        np.testing.assert_allclose(train["video"][row, :real, 0, 0, 0] * 255,
                                   value + np.arange(real), rtol=1e-5)


def test_fixed_length_float_clips_and_bad_clip_configs(data_dir: str):
    ds = data.build(clip_config(data_dir, image_key="flow", num_frames=None), seed=0)
    assert ds.info.clip_shape == (3, 4, 6, 1)
    batch = next(ds.eval_batches("test", global_batch_size=2))
    expected = np.linspace(0.0, 1.0, 72, dtype=np.float32).reshape(3, 4, 6, 1)
    np.testing.assert_array_equal(batch["video"][1], expected)  # floats kept as they are
    assert not batch["video"][0].any() and batch["frame_mask"].all()
    with pytest.raises(ValueError, match="data.num_frames must be set"):
        data.build(clip_config(data_dir, num_frames=None), seed=0)
    with pytest.raises(ValueError, match="data.num_frames must be >= 1"):
        data.build(clip_config(data_dir, num_frames=0), seed=0)
    for representation in ("image", "tokens"):
        with pytest.raises(ValueError, match=(
                rf"data.representation='{representation}' reads images \[H, W, C\] but "
                r"data.image_key='video' of attnx_test_clips has shape \(None, 4, 6, 3\); the "
                r"representations of pixel arrays: 'tokens' and 'image' .* 'video' for clips")):
            data.build(clip_config(data_dir, representation=representation), seed=0)


def test_preparing_prints_two_plain_lines_and_no_tfds_noise(tmp_path, capfd, caplog):
    """In a log (no terminal), preparing a dataset prints attnx's own two lines: no progress-bar
    escapes, no TFDS warnings a user cannot act on."""
    config = data.default_data_config(name="listops", builder_config="tiny", seq_len=512,
                                      data_dir=str(tmp_path / "quiet"))
    data.build(config, seed=0)
    data.build(config, seed=0)  # prepared: silent
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("attnx.data: preparing listops/tiny")
    assert lines[1].startswith("attnx.data: prepared listops/tiny in ")
    assert not [r.getMessage() for r in caplog.records if "dataset_info.json" in r.getMessage()]
