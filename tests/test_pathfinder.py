"""Tests of the Pathfinder generator (`attnx.data.pathfinder`) and its pipeline batches.

The label is checked against an independent connectivity oracle: the stored geometry is drawn
again *undashed* (every gap between two dashes of a path filled in), by stamping discs at points
sampled densely along the centre lines, and a 4-connected flood fill from one marker decides
whether the other is reached.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attnx import data
from attnx.data import pathfinder

SPLITS = ("train", "validation", "test")
FINE = 4  # oracle cells per pixel


# ----------------------------------------------------------------------------- the oracle


def _stamp_points(canvas: np.ndarray, points: np.ndarray, radius: float) -> None:
    """Mark the cells of `canvas` whose centres lie within `radius` px of any of `points`."""
    r = int(math.ceil(radius * FINE)) + 1
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    cells = np.floor(points * FINE).astype(int)  # [n, 2] (x, y)
    xs = cells[:, None, 0] + dx.reshape(-1)
    ys = cells[:, None, 1] + dy.reshape(-1)
    centre_x, centre_y = (xs + 0.5) / FINE, (ys + 0.5) / FINE
    near = (centre_x - points[:, None, 0]) ** 2 + (centre_y - points[:, None, 1]) ** 2 <= radius**2
    inside = near & (xs >= 0) & (ys >= 0) & (xs < canvas.shape[1]) & (ys < canvas.shape[0])
    canvas[ys[inside], xs[inside]] = True


def undashed(record: dict, size: int, wider: float = 0.0) -> np.ndarray:
    """Bool `[size * FINE, size * FINE]`: every path drawn as one unbroken stroke, plus markers,
    each `wider` px wider on each side than the generator draws them."""
    scale = size / 32
    canvas = np.zeros((size * FINE, size * FINE), bool)
    dashes, owner = np.asarray(record["dashes"]), np.asarray(record["dash_path"])
    segments = [dashes]
    for path in np.unique(owner):  # The gaps: from each dash's end to the next dash's start.
        own = dashes[owner == path]
        segments.append(np.concatenate([own[:-1, 2:], own[1:, :2]], axis=1))
    for a_x, a_y, b_x, b_y in np.concatenate(segments):
        steps = max(2, int(math.hypot(b_x - a_x, b_y - a_y) / 0.05) + 1)
        t = np.linspace(0.0, 1.0, steps)[:, None]
        points = np.array([a_x, a_y]) + t * np.array([b_x - a_x, b_y - a_y])
        _stamp_points(canvas, points, pathfinder.THICKNESS * scale / 2 + wider)
    _stamp_points(canvas, np.asarray(record["markers"]), pathfinder.MARKER_RADIUS * scale + wider)
    return canvas


def flood_fill(canvas: np.ndarray, start_xy: np.ndarray) -> np.ndarray:
    """The 4-connected component of `canvas` holding the cell at `start_xy` (pixels)."""
    x, y = np.floor(np.asarray(start_xy) * FINE).astype(int)
    assert canvas[y, x], "the marker centre must be drawn"
    region = np.zeros_like(canvas)
    region[y, x] = True
    while True:
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= canvas
        if (grown == region).all():
            return region
        region = grown


def connected(record: dict, size: int) -> bool:
    """The oracle: is the second marker in the first marker's component of the undashed drawing?"""
    region = flood_fill(undashed(record, size), record["markers"][0])
    x, y = np.floor(np.asarray(record["markers"][1]) * FINE).astype(int)
    return bool(region[y, x])


def _segment_distances(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Distances between segments p `[n, 4]` and q `[m, 4]` that do not cross: `[n, m]`."""

    def point_to_segments(x, s):  # x [n, 2], s [m, 4] -> [n, m]
        a, b = s[None, :, :2], s[None, :, 2:]
        t = np.clip(((x[:, None] - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1), 0, 1)
        return np.linalg.norm(x[:, None] - (a + t[..., None] * (b - a)), axis=-1)

    return np.minimum.reduce([
        point_to_segments(p[:, :2], q), point_to_segments(p[:, 2:], q),
        point_to_segments(q[:, :2], p).T, point_to_segments(q[:, 2:], p).T,
    ])


def centre_lines(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """Every piece of undashed centre line `[n, 4]` and its path `[n]`."""
    dashes, owner = np.asarray(record["dashes"]), np.asarray(record["dash_path"])
    lines, paths = [], []
    for path in np.unique(owner):
        own = dashes[owner == path]
        vertices = np.concatenate([own[:, :2], own[-1:, 2:]])
        lines.append(np.concatenate([vertices[:-1], vertices[1:]], axis=1))
        paths.append(np.full(len(own), path))
    return np.concatenate(lines), np.concatenate(paths)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(data_dir: str) -> data.Dataset:
    config = data.default_data_config(
        name="pathfinder", builder_config="tiny", data_dir=data_dir, seq_len=1024)
    return data.build(config, seed=0)


@pytest.fixture(scope="module")
def records(tiny: data.Dataset, data_dir: str) -> dict[str, list[dict]]:
    out = {}
    for split in SPLITS:
        source = tfds.data_source("pathfinder/tiny", split=split, data_dir=data_dir,
                                  download=False)
        out[split] = [source[i] for i in range(len(source))]
    return out


@pytest.fixture(scope="module")
def other_examples() -> list[tuple[dict, int]]:
    """A few examples of the other difficulty and sizes, straight from the generator."""
    out = []
    for index, (size, difficulty) in enumerate([(32, "easy")] * 6 + [(64, "hard")] * 2):
        record = pathfinder.example(3, "train", index, index % 2, image_size=size,
                                    difficulty=difficulty)
        out.append((record, size))
    return out


# ----------------------------------------------------------------------------- labels


def test_oracle_on_hand_made_layouts():
    """The oracle itself: a path joins its ends, two apart paths do not join, crossing ones do."""
    def record(paths, markers, size=32):
        layout = pathfinder.Layout(tuple(np.array(p, float) for p in paths),
                                   np.array(markers, float), 0)
        dashes = [pathfinder.dashes_of(p, size / 32) for p in layout.paths]
        return {"dashes": np.concatenate(dashes),
                "dash_path": np.concatenate([np.full(len(d), i) for i, d in enumerate(dashes)]),
                "markers": layout.markers}

    straight = [[5 + 2.5 * i, 10.0] for i in range(8)]
    straight[-1][0] = straight[-2][0] + pathfinder.DASH
    assert connected(record([straight], [straight[0], straight[-1]]), 32)
    below = [[x, y + 6.0] for x, y in straight]
    assert not connected(record([straight, below], [straight[0], below[-1]]), 32)
    # A path that crosses another joins them, which is why the generator keeps paths apart.
    crossing = [[12.0, 4.0 + 2.5 * i] for i in range(7)]
    assert connected(record([straight, crossing], [straight[0], crossing[-1]]), 32)
    # And the dashes really are dashed: the image of the straight path has its gaps dark.
    image = pathfinder.render(pathfinder.Layout((np.array(straight),),
                                                np.array([straight[0], straight[-1]]), 1), 32)
    row = image[10, :, 0].astype(int)
    gaps = [int(x + pathfinder.DASH + pathfinder.GAP / 2) for x, _ in straight[1:-2]]
    dashes = [int(x + pathfinder.DASH / 2) for x, _ in straight[1:-2]]
    assert (row[gaps] < row[dashes]).all()


def test_labels_match_flood_fill_of_the_undashed_paths(records, other_examples):
    checked = [(r, 32) for split in ("validation", "test") for r in records[split]]
    checked += other_examples
    for record, size in checked:
        assert connected(record, size) == bool(record["label"])


def test_markers_sit_on_path_ends(records):
    for record in records["validation"]:
        lines, paths = centre_lines(record)
        ends = {}
        for path in np.unique(paths):
            own = lines[paths == path]
            ends[path] = (own[0, :2], own[-1, 2:])
        owners = []
        for marker in record["markers"]:
            hits = [p for p, (a, b) in ends.items()
                    if np.allclose(marker, a, atol=1e-4) or np.allclose(marker, b, atol=1e-4)]
            assert len(hits) == 1
            owners.append(hits[0])
        assert (owners[0] == owners[1]) == bool(record["label"])
        assert not np.allclose(record["markers"][0], record["markers"][1])


# ----------------------------------------------------------------------------- geometry


def test_geometry_follows_the_specification(records, other_examples):
    for record, size in [(r, 32) for r in records["train"][:48]] + other_examples:
        scale = size / 32
        dashes = np.asarray(record["dashes"])
        lengths = np.linalg.norm(dashes[:, 2:] - dashes[:, :2], axis=-1)
        np.testing.assert_allclose(lengths, pathfinder.DASH * scale, rtol=1e-5)
        margin = pathfinder.MARGIN * scale - 1e-4
        assert (dashes >= margin).all() and (dashes <= size - margin).all()
        lines, paths = centre_lines(record)
        # Two long paths and the distractors, of the difficulty's lengths.
        contour, count, distractor = pathfinder.DIFFICULTIES[
            "hard" if len(dashes) == 2 * 14 + 3 * 4 else "easy"]
        assert sorted(np.bincount(paths)) == sorted([contour] * 2 + [distractor] * count)
        for path in np.unique(paths):
            own = lines[paths == path]
            headings = np.arctan2(own[:, 3] - own[:, 1], own[:, 2] - own[:, 0])
            turns = np.angle(np.exp(1j * np.diff(headings)))
            assert (np.abs(turns) <= pathfinder.MAX_TURN + 1e-5).all()
        # Centre lines of different paths keep a stroke width plus SEPARATION apart.
        apart = _segment_distances(lines, lines)[paths[:, None] != paths[None, :]]
        needed = (pathfinder.THICKNESS + pathfinder.SEPARATION) * scale
        assert apart.min() >= needed - 1e-4


def test_image_is_the_stored_geometry(records):
    """Lit pixels are near the stored dashes and markers; every dash and marker is lit."""
    for record in records["test"]:
        image = np.asarray(record["image"])[..., 0]
        assert image.dtype == np.uint8 and image.shape == (32, 32)
        levels = {round(255 * k / pathfinder.SUPERSAMPLE**2)
                  for k in range(pathfinder.SUPERSAMPLE**2 + 1)}
        assert set(np.unique(image).tolist()) <= levels
        # The oracle's strokes samples points 0.05 px apart: widen them by that much.
        drawing = undashed(record, 32, wider=0.05).reshape(32, FINE, 32, FINE).any(axis=(1, 3))
        assert not (image > 0)[~drawing].any()
        dashes = np.asarray(record["dashes"])
        middles = np.floor((dashes[:, :2] + dashes[:, 2:]) / 2).astype(int)
        assert (image[middles[:, 1], middles[:, 0]] > 0).all()
        markers = np.floor(np.asarray(record["markers"])).astype(int)
        assert (image[markers[:, 1], markers[:, 0]] > 0).all()


# ----------------------------------------------------------------------------- the builder


def test_deterministic_balanced_and_versioned(records):
    config = pathfinder.Pathfinder.builder_configs["tiny"]
    sizes = (config.num_train, config.num_validation, config.num_test)
    for split, n in zip(SPLITS, sizes):
        labels = [int(r["label"]) for r in records[split]]
        assert len(labels) == n and sum(labels) == n // 2  # Exactly balanced.
    # A stored record is the generator's pure function of (seed, split, index, label).
    for split in SPLITS:
        for index in (0, 5):
            record = records[split][index]
            again = pathfinder.example(config.seed, split, index, int(record["label"]),
                                       image_size=32, difficulty="hard")
            for key in ("image", "dashes", "dash_path", "markers"):
                np.testing.assert_array_equal(np.asarray(record[key]), again[key])
    reseeded = pathfinder.example(config.seed + 1, "train", 0, int(records["train"][0]["label"]),
                                  image_size=32, difficulty="hard")
    assert not np.array_equal(reseeded["image"], np.asarray(records["train"][0]["image"]))
    assert str(pathfinder.Pathfinder.VERSION) in pathfinder.Pathfinder.RELEASE_NOTES
    names = set(pathfinder.Pathfinder.builder_configs)
    assert {"32_hard", "32_easy", "64_hard", "128_hard", "small_32_hard", "medium_32_easy",
            "tiny"} <= names
    assert pathfinder.Pathfinder.builder_configs["32_hard"].num_train == 160_000


# sha256 of the examples below as each generator version draws them: pixels, dashes to 1e-3 px,
# dash owners. 1.0.0's was computed with that version's code before its hot loops were rewritten
# for speed (the rewrite draws the same examples).
DIGESTS = {"1.0.0": "fd36457bee063cbb6c9acf3c98d58687453ebeacc01336f64e3e08dd7145168d"}


def test_examples_are_those_of_the_released_version():
    """Same seed, same images: a change to what is drawn must bump Pathfinder.VERSION (and add
    its digest here), since stored datasets of the old version would otherwise silently differ."""
    digest = hashlib.sha256()
    for index, (size, difficulty) in enumerate([(32, "hard")] * 4 + [(32, "easy"), (64, "hard")]):
        record = pathfinder.example(0, "test", index, index % 2, image_size=size,
                                    difficulty=difficulty)
        digest.update(record["image"].tobytes())
        digest.update(np.round(record["dashes"].astype(np.float64), 3).tobytes())
        digest.update(record["dash_path"].astype(np.int64).tobytes())
    assert digest.hexdigest() == DIGESTS[str(pathfinder.Pathfinder.VERSION)]


def test_bad_arguments_are_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="difficulty"):
        pathfinder.sample_layout(rng, 1, difficulty="medium")
    with pytest.raises(ValueError, match="label"):
        pathfinder.sample_layout(rng, 2)


# ----------------------------------------------------------------------------- pipeline


def test_batches_are_pixels_plus_one(tiny: data.Dataset, records, data_dir: str):
    info = tiny.info
    assert (info.kind, info.vocab_size, info.num_classes, info.seq_len) == (
        "classification", 257, 2, 1024)
    batch = next(tiny.eval_batches("validation", global_batch_size=8))
    for row in range(8):
        record = records["validation"][row]
        expected = np.asarray(record["image"]).reshape(-1).astype(np.int32) + 1
        np.testing.assert_array_equal(batch["inputs"][row], expected)
        assert batch["label"][row] == record["label"]
    assert batch["mask"].all() and batch["inputs"].min() >= 1
    short = data.default_data_config(
        name="pathfinder", builder_config="tiny", data_dir=data_dir, seq_len=1000)
    with pytest.raises(ValueError, match="data.seq_len=1000 would truncate"):
        data.build(short, seed=0)
    with pytest.raises(ValueError, match="tiny"):
        data.build(data.default_data_config(name="pathfinder", builder_config="huge"), seed=0)


def test_image_representation_serves_the_same_examples(tiny: data.Dataset, records,
                                                       data_dir: str):
    config = data.default_data_config(name="pathfinder", builder_config="tiny",
                                      data_dir=data_dir, representation="image")
    images = data.build(config, seed=0)
    info = images.info
    assert (info.kind, info.image_shape, info.num_classes, info.vocab_size, info.seq_len) == (
        "image_classification", (32, 32, 1), 2, None, None)
    assert info.features["image"] == data.Feature("float32", (32, 32, 1))
    batch = next(images.eval_batches("validation", global_batch_size=8))
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (8, 32, 32, 1)
    for row in range(8):
        record = records["validation"][row]
        np.testing.assert_allclose(batch["image"][row], np.asarray(record["image"]) / 255.0,
                                   rtol=1e-6)
        assert batch["label"][row] == record["label"]
    # Same seed, same position: the same examples as the pixel tokens, in the same order.
    pixels = images.train_batch(3, global_batch_size=8)
    tokens = tiny.train_batch(3, global_batch_size=8)
    np.testing.assert_array_equal(
        np.round(pixels["image"] * 255).astype(np.int32).reshape(8, -1) + 1, tokens["inputs"])
    np.testing.assert_array_equal(pixels["label"], tokens["label"])
    config.representation = "video"
    with pytest.raises(ValueError, match=r"data.representation='video' is not a representation "
                                         r"of pathfinder; expected one of \['image', 'tokens'\]"):
        data.build(config, seed=0)
