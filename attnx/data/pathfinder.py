"""`pathfinder`: the Long Range Arena Pathfinder task, generated locally.

An example is a grayscale `size x size` image (32 by default; 64 and 128 as options) of dashed
curved paths and two circle markers; the label is 1 when the markers sit on the two ends of one
path and 0 when they sit on ends of two different paths. As in Linsley et al. (2018), whose images
LRA uses, every image holds two long paths of `contour_length` dashes (the marked one(s)), both
drawn the same way whatever the label, and shorter distractor paths; difficulty is the length of
the long paths (LRA's `curv_baseline` = 6 dashes is 'easy', `curv_contour_length_14` is 'hard',
the one LRA's Table 1 reports). The pipeline serves an image (`SPEC`, at the end of this module)
as LRA's `size * size` tokens in raster order, intensity + 1 (0 stays padding;
`data.representation='tokens'`, the default) or as the float image `[size, size, 1]` / 255
(`'image'`).

How an example is drawn (all lengths in units of size / 32, so every size shows the same scene):
- A path is a chain of pieces, each a dash of `DASH` followed by a gap of `GAP` along a straight
  line (the last piece is a lone dash), the heading turning by at most `MAX_TURN` from one piece
  to the next. It grows both ways from a random seed point: each new piece takes the first of
  `TURN_CANDIDATES` random turns that keeps it inside the image (`MARGIN` from the border) and
  clear of everything drawn so far; a piece with no such turn removes the one before it (at most
  `_BACKTRACKS` times), after which the path starts again from a new seed.
- Order: the two long paths first, then the distractors. A positive marks both ends of one long
  path, a negative one end of each (which path, which ends and the marker order are random).
- Separation: every drawn shape is a capsule (a dash: a segment of half-width THICKNESS / 2; a
  marker: a disc of MARKER_RADIUS). Shapes of different paths, and non-adjacent pieces of one
  path, leave `SEPARATION` of empty space between them, measured on the undashed centre lines;
  the four ends of the long paths (the places a marker may go) count as marker discs whether a
  marker is drawn there or not. So the undashed paths never touch, and connectivity, i.e. the
  label, is a property of the image, not only of how it was built.
- Rendering: dashes are strokes of width `THICKNESS` with flat ends (so a gap is GAP wide) and
  markers are discs of radius `MARKER_RADIUS`, rasterised on a grid `SUPERSAMPLE` times finer
  and averaged, so intensities are quantised to SUPERSAMPLE**2 + 1 levels:
  round(255 * covered / SUPERSAMPLE**2).

Each record keeps the geometry it was drawn from (`dashes [D, 4]` as x0, y0, x1, y1 in pixels,
`dash_path [D]`, `markers [2, 2]`), so the label can be checked independently (e.g. by a flood fill
over the undashed paths). Randomness comes only from `numpy.random.default_rng((seed, split,
index))` per example (NumPy is pinned; changing the generator bumps VERSION). Labels are exactly
balanced within each split.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from attnx.data import representations
from attnx.data.spec import DatasetSpec, Served, builder_of_configs

# Geometry in units of size / 32.
DASH = 1.5
GAP = 1.0
THICKNESS = 1.0
MARKER_RADIUS = 1.0
SEPARATION = 1.0
MARGIN = 2.0
MAX_TURN = math.pi / 6
TURN_CANDIDATES = 8
# Rendering and the clearance field use cells 1 / SUPERSAMPLE pixel wide.
SUPERSAMPLE = 4
# Difficulty: dashes per long path, number of distractor paths, dashes per distractor.
DIFFICULTIES = {"easy": (6, 3, 2), "hard": (14, 3, 4)}
SPLITS = ("train", "validation", "test")
_PATH_ATTEMPTS = 20
_BACKTRACKS = 5
_EXAMPLE_ATTEMPTS = 100
# Candidate pieces are checked at points _SAMPLE pixels apart against a field sampled at cell
# centres; _SLACK bounds both errors (half a sample spacing + half a cell diagonal).
_SAMPLE = 0.25
_SLACK = _SAMPLE / 2 + math.sqrt(0.5) / SUPERSAMPLE


@dataclasses.dataclass(eq=False)
class PathfinderConfig(tfds.core.BuilderConfig):
    """Image size, difficulty ('easy' | 'hard'), split sizes and seed."""

    image_size: int = 32
    difficulty: str = "hard"
    num_train: int = 0
    num_validation: int = 0
    num_test: int = 0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Layout:
    """One drawn scene, in pixels.

    Attributes:
      paths: centre-line vertices of each path, `[n_pieces + 1, 2]` (x, y); piece i runs from
        vertex i to vertex i + 1 and its first DASH (the whole last piece) is drawn.
      markers: `[2, 2]` marker centres.
      label: 1 if both markers are ends of one path.
    """

    paths: tuple[np.ndarray, ...]
    markers: np.ndarray
    label: int


def dashes_of(path: np.ndarray, scale: float) -> np.ndarray:
    """The drawn dashes `[n, 4]` (x0, y0, x1, y1) of a path's vertices `[n + 1, 2]`."""
    start, end = path[:-1], path[1:]
    length = np.linalg.norm(end - start, axis=-1, keepdims=True)
    dash_end = start + (end - start) * np.minimum(DASH * scale / length, 1.0)
    return np.concatenate([start, dash_end], axis=-1)


def _capsule_distance(a: np.ndarray, b: np.ndarray, extent: float, cells: int,
                      flat: bool = False) -> tuple[tuple[slice, slice], np.ndarray]:
    """Distances from the centres of the cells (1 / SUPERSAMPLE px, `cells` per side) within
    `extent` of segment a-b's bounding box to the segment: (window, distances `[h, w]`). With
    `flat`, cells beside the segment's ends (not between its two perpendiculars) are at infinity,
    so that a stroke of the segment has flat ends."""
    (ax, ay), (bx, by) = a.tolist(), b.tolist()
    lo_x, lo_y, hi_x, hi_y = (
        min(max(bound, 0), cells) for bound in (
            math.floor((min(ax, bx) - extent) * SUPERSAMPLE),
            math.floor((min(ay, by) - extent) * SUPERSAMPLE),
            math.ceil((max(ax, bx) + extent) * SUPERSAMPLE),
            math.ceil((max(ay, by) + extent) * SUPERSAMPLE)))
    x = (np.arange(lo_x, hi_x) + 0.5)[None, :] / SUPERSAMPLE - ax
    y = (np.arange(lo_y, hi_y) + 0.5)[:, None] / SUPERSAMPLE - ay
    ab = b - a
    abx, aby = ab.tolist()
    along = (x * abx + y * aby) / max(float(ab @ ab), 1e-12)
    t = np.minimum(np.maximum(along, 0.0), 1.0)
    distance = np.sqrt((x - t * abx) ** 2 + (y - t * aby) ** 2)
    if flat:
        distance = np.where(along == t, distance, np.inf)
    return (slice(lo_y, hi_y), slice(lo_x, hi_x)), distance


def _stamp(field: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, reach: float) -> None:
    """Add to `field` (in place; the distance from each cell centre to the nearest shape's edge)
    the capsule a-b of half-width `radius`, exactly up to `reach` from its edge."""
    window, distance = _capsule_distance(a, b, radius + reach, field.shape[0])
    np.minimum(field[window], distance - radius, out=field[window])


def _room(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The field at the cells holding `points` `[..., 2]` (x, y pixels inside the image)."""
    index = (points * SUPERSAMPLE).astype(int)
    return field.ravel()[index[..., 1] * field.shape[1] + index[..., 0]]


class _Geometry:
    """The module's lengths in pixels for one image size and kind of path (`marked`: the ends
    are marker discs), and the sample points and room needed along a candidate piece."""

    def __init__(self, size: int, marked: bool):
        scale = size / 32
        self.low, self.high = MARGIN * scale, size - MARGIN * scale
        self.stroke = THICKNESS * scale / 2
        self.separation = SEPARATION * scale
        self.end_radius = MARKER_RADIUS * scale if marked else self.stroke
        # How far from a shape's edge the clearance field must be exact.
        self.reach = (max(MARKER_RADIUS * scale, self.stroke) + self.separation + _SLACK
                      + 1 / SUPERSAMPLE)
        # By (lone dash, path end): piece length, sample fractions `[P, 1]`, room needed `[P]`.
        self.pieces = {}
        for lone in (False, True):
            length = (DASH if lone else DASH + GAP) * scale
            fraction = np.linspace(0.0, 1.0, int(math.ceil(length / _SAMPLE)) + 1)[:, None]
            for end in (False, True):
                needed = np.full(len(fraction), self.stroke + self.separation + _SLACK)
                if end:
                    needed[-1] = self.end_radius + self.separation + _SLACK
                self.pieces[lone, end] = (length, fraction, needed)


@functools.lru_cache(maxsize=None)
def _geometry(size: int, marked: bool) -> _Geometry:
    """`_Geometry(size, marked)`, built once (read only)."""
    return _Geometry(size, marked)


@dataclasses.dataclass(frozen=True)
class _Shapes:
    """Capsules of the path being grown: segments a-b `[M, 2]`, half-widths and piece numbers
    `[M]`."""

    a: np.ndarray
    b: np.ndarray
    radius: np.ndarray
    index: np.ndarray

    @staticmethod
    def of(vertices: np.ndarray, pieces: list[int], radius: float) -> _Shapes:
        """The pieces between consecutive `vertices` `[n + 1, 2]`, numbered `pieces[:n]`."""
        n = len(vertices) - 1
        return _Shapes(vertices[:-1], vertices[1:], np.full(n, radius), np.array(pieces[:n], int))

    def __add__(self, other: _Shapes) -> _Shapes:
        return _Shapes(np.concatenate([self.a, other.a]), np.concatenate([self.b, other.b]),
                       np.concatenate([self.radius, other.radius]),
                       np.concatenate([self.index, other.index]))


class _ShapeStack:
    """The shapes `_clear` tests a candidate piece against, as a stack that grows and shrinks with
    the path in place: segment starts `a` and directions `ab` (`[M, 2]`), `max(|ab|^2, 1e-12)`,
    half-widths and piece numbers (`[M]`), for the first `size` of `capacity` rows."""

    def __init__(self, shapes: _Shapes, capacity: int):
        n = len(shapes.index)
        self.a, self.ab = np.zeros((capacity, 2)), np.zeros((capacity, 2))
        self.length2, self.radius = np.zeros(capacity), np.zeros(capacity)
        self.index = np.zeros(capacity, int)
        self.a[:n], self.ab[:n] = shapes.a, shapes.b - shapes.a
        self.length2[:n] = np.maximum((self.ab[:n] * self.ab[:n]).sum(-1), 1e-12)
        self.radius[:n], self.index[:n] = shapes.radius, shapes.index
        self.size = n

    def push(self, a: np.ndarray, b: np.ndarray, radius: float, index: int) -> None:
        """Add segment a-b `[2]`."""
        m = self.size
        self.a[m], self.ab[m] = a, b - a
        self.length2[m] = max((self.ab[m] * self.ab[m]).sum(), 1e-12)
        self.radius[m], self.index[m] = radius, index
        self.size = m + 1

    def pop(self) -> None:
        self.size -= 1


def _clear(points: np.ndarray, needed: np.ndarray, field: np.ndarray, own: _ShapeStack,
           piece: int) -> np.ndarray:
    """Whether candidate pieces sampled at `points` `[K, P, 2]`, each point needing `needed` `[P]`
    (its half-width + separation + slack) of room, are clear of the other paths (`field`) and of
    this path's shapes on pieces not adjacent to `piece`: bool `[K]`."""
    ok = (_room(field, points) >= needed).all(-1)
    if not ok.any():
        return ok
    m = own.size
    near = np.abs(own.index[:m] - piece) >= 2
    if near.any():
        a, ab = own.a[:m][near], own.ab[:m][near]
        x = points[ok][..., None, :] - a  # [K', P, M, 2]
        t = np.minimum(np.maximum((x * ab).sum(-1) / own.length2[:m][near], 0.0), 1.0)
        offset = x - t[..., None] * ab
        distance = np.sqrt((offset * offset).sum(-1))  # what np.linalg.norm computes
        ok[ok] = (distance >= needed[:, None] + own.radius[:m][near]).all(axis=(1, 2))
    return ok


def _grow_half(rng: np.random.Generator, origin: np.ndarray, heading: float,
               pieces: list[int], last: bool, field: np.ndarray, own: _Shapes,
               g: _Geometry) -> list[np.ndarray] | None:
    """Grow the path's `pieces` (piece numbers in growing order) from `origin`: the vertices
    after `origin`, or None if stuck. The far end is the path's end (a marker disc when marked);
    with `last`, the final piece is a lone dash. A piece with no valid candidate turn removes the
    piece before it (backtracking), at most `_BACKTRACKS` times."""
    vertices, headings = [origin], [heading]
    shapes = _ShapeStack(own, len(own.index) + len(pieces))  # own + the pieces grown so far
    direction = np.empty((TURN_CANDIDATES, 2))
    backtracks = 0
    while len(vertices) <= len(pieces):
        step = len(vertices) - 1
        final = step == len(pieces) - 1
        length, fraction, needed = g.pieces[last and final, final]
        turns = headings[-1] + rng.uniform(-MAX_TURN, MAX_TURN, TURN_CANDIDATES)
        np.cos(turns, out=direction[:, 0])
        np.sin(turns, out=direction[:, 1])
        ends = vertices[-1] + length * direction
        ok = ((ends >= g.low) & (ends <= g.high)).all(-1)
        if ok.any():
            points = vertices[-1] + fraction * (ends[ok] - vertices[-1])[:, None]  # [K', P, 2]
            ok[ok] = _clear(points, needed, field, shapes, pieces[step])
        if ok.any():
            choice = int(np.argmax(ok))
            shapes.push(vertices[-1], ends[choice], g.stroke, pieces[step])
            vertices.append(ends[choice])
            headings.append(turns[choice])
        elif step == 0 or backtracks == _BACKTRACKS:
            return None
        else:
            backtracks += 1
            shapes.pop()
            del vertices[-1], headings[-1]
    return vertices[1:]


def _grow(rng: np.random.Generator, n_pieces: int, marked: bool, field: np.ndarray,
          size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A path of `n_pieces` pieces clear of the shapes in `field`: (vertices `[n_pieces + 1, 2]`,
    a copy of field with the path added), or None if it got stuck from `_PATH_ATTEMPTS` seeds.

    The path grows both ways from a seed vertex (so a long path fits an image it could not cross
    straight): first its pieces from the seed to the end, then back from the seed to the start.
    With `marked`, both ends are marker discs: they keep their distance as such and are added as
    such, drawn or not."""
    g = _geometry(size, marked)
    middle = n_pieces // 2
    no_shapes = _Shapes(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), np.zeros(0, int))
    for _ in range(_PATH_ATTEMPTS):
        seed = rng.uniform(g.low, g.high, 2)
        if _room(field, seed) < g.stroke + g.separation + _SLACK:
            continue
        heading = rng.uniform(0.0, 2.0 * math.pi)
        ahead = list(range(middle, n_pieces))
        forward = _grow_half(rng, seed, heading, ahead, True, field, no_shapes, g)
        if forward is None:
            continue
        end = _Shapes(forward[-1][None], forward[-1][None], np.array([g.end_radius]),
                      np.array([n_pieces - 1]))
        own = _Shapes.of(np.array([seed, *forward]), ahead, g.stroke) + end
        first = forward[0] - seed  # The piece back from the seed turns from this one's heading.
        back = math.atan2(first[1], first[0]) + math.pi
        backward = [] if middle == 0 else _grow_half(
            rng, seed, back, list(range(middle - 1, -1, -1)), False, field, own, g)
        if backward is None:
            continue
        vertices = np.array([*backward[::-1], seed, *forward])
        field = field.copy()
        for a, b in zip(vertices[:-1], vertices[1:]):
            _stamp(field, a, b, g.stroke, g.reach)
        for end_point in (vertices[0], vertices[-1]):
            _stamp(field, end_point, end_point, g.end_radius, g.reach)
        return vertices, field
    return None


def sample_layout(rng: np.random.Generator, label: int, *, image_size: int = 32,
                  difficulty: str = "hard") -> Layout:
    """A random scene with the given label (see the module docstring)."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    contour, num_distractors, distractor_length = DIFFICULTIES[difficulty]
    cells = image_size * SUPERSAMPLE
    for _ in range(_EXAMPLE_ATTEMPTS):
        field = np.full((cells, cells), np.inf, np.float32)
        paths = []
        for index in range(2 + num_distractors):
            long_path = index < 2
            grown = _grow(rng, contour if long_path else distractor_length, long_path, field,
                          image_size)
            if grown is None:
                break
            path, field = grown
            paths.append(path)
        else:
            first, ends = rng.integers(0, 2), -rng.integers(0, 2, 2)  # vertex 0 or -1
            if label:
                markers = np.stack([paths[first][0], paths[first][-1]])
            else:
                markers = np.stack([paths[first][ends[0]], paths[1 - first][ends[1]]])
            if rng.random() < 0.5:
                markers = markers[::-1]
            return Layout(tuple(paths), markers, int(label))
    raise RuntimeError(f"no {difficulty} {image_size}x{image_size} layout in "
                       f"{_EXAMPLE_ATTEMPTS} attempts")


def render(layout: Layout, image_size: int) -> np.ndarray:
    """The dashed paths and markers as a uint8 image `[size, size, 1]`."""
    scale = image_size / 32
    cells = image_size * SUPERSAMPLE
    canvas = np.zeros((cells, cells), bool)

    def draw(a: np.ndarray, b: np.ndarray, radius: float, flat: bool) -> None:
        window, distance = _capsule_distance(a, b, radius, cells, flat)
        canvas[window] |= distance <= radius

    for path in layout.paths:
        for x0, y0, x1, y1 in dashes_of(path, scale):
            draw(np.array([x0, y0]), np.array([x1, y1]), THICKNESS * scale / 2, True)
    for marker in layout.markers:
        draw(marker, marker, MARKER_RADIUS * scale, False)
    covered = canvas.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE).sum(axis=(1, 3))
    return np.round(255.0 * covered / SUPERSAMPLE**2).astype(np.uint8)[..., None]


def example(seed: int, split: str, index: int, label: int, *, image_size: int,
            difficulty: str) -> dict[str, np.ndarray | int]:
    """Record number `index` of `split`: image, label and the geometry it was drawn from."""
    rng = np.random.default_rng((seed, SPLITS.index(split), index))
    layout = sample_layout(rng, label, image_size=image_size, difficulty=difficulty)
    scale = image_size / 32
    dashes = [dashes_of(path, scale) for path in layout.paths]
    return {
        "image": render(layout, image_size),
        "label": layout.label,
        "dashes": np.concatenate(dashes).astype(np.float32),
        "dash_path": np.concatenate(
            [np.full(len(d), p, np.int32) for p, d in enumerate(dashes)]),
        "markers": layout.markers.astype(np.float32),
    }


def _configs() -> list[PathfinderConfig]:
    """LRA-sized configs `<size>_<difficulty>` (LRA: 160,000/20,000/20,000 images), CPU-sized
    `small_<size>_<difficulty>` (2,000/500/500) and `medium_<size>_<difficulty>`
    (20,000/2,000/2,000), and `tiny` (32 hard, 96/32/32) for tests."""
    configs = []
    for size in (32, 64, 128):
        for difficulty in DIFFICULTIES:
            configs.append(PathfinderConfig(
                name=f"{size}_{difficulty}",
                description=f"LRA-sized Pathfinder-{size} ({difficulty}): 160,000/20,000/20,000.",
                image_size=size, difficulty=difficulty,
                num_train=160_000, num_validation=20_000, num_test=20_000))
            configs.append(PathfinderConfig(
                name=f"small_{size}_{difficulty}",
                description=f"CPU-sized Pathfinder-{size} ({difficulty}): 2,000/500/500.",
                image_size=size, difficulty=difficulty,
                num_train=2_000, num_validation=500, num_test=500))
            configs.append(PathfinderConfig(
                name=f"medium_{size}_{difficulty}",
                description=f"Pathfinder-{size} ({difficulty}) for CPU runs that must generalise: "
                            "20,000/2,000/2,000.",
                image_size=size, difficulty=difficulty,
                num_train=20_000, num_validation=2_000, num_test=2_000))
    configs.append(PathfinderConfig(
        name="tiny", description="Tests and smoke runs: Pathfinder-32 (hard), 96/32/32.",
        image_size=32, difficulty="hard", num_train=96, num_validation=32, num_test=32))
    return configs


class Pathfinder(tfds.core.GeneratorBasedBuilder):
    """LRA Pathfinder: are the two markers connected by one dashed path?"""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Generated Pathfinder: sizes 32/64/128, easy/hard, LRA/small/medium/tiny."}
    BUILDER_CONFIGS = _configs()
    DEFAULT_BUILDER_CONFIG_NAME = "32_hard"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                # Raw uint8 pixels (tfds.features.Image would need TensorFlow to encode PNG).
                "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=2),
                "dashes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                "dash_path": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "markers": tfds.features.Tensor(shape=(2, 2), dtype=np.float32),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Everything is generated.
        config = self.builder_config
        sizes = (config.num_train, config.num_validation, config.num_test)
        return {split: self._generate_examples(split, n) for split, n in zip(SPLITS, sizes)}

    def _generate_examples(self, split: str, n: int) -> Iterator[tuple[int, dict]]:
        config = self.builder_config
        # Exactly n // 2 positives, in an order drawn from the seed.
        labels = np.random.default_rng((config.seed, SPLITS.index(split))).permutation(n) % 2
        for index in range(n):
            yield index, example(config.seed, split, index, int(labels[index]),
                                 image_size=config.image_size, difficulty=config.difficulty)


def _tokens(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """LRA's pixel sequence: `representations.image_tokens`, `data.seq_len` at least the pixel
    count."""
    pixels = builder.builder_config.image_size**2
    if config.seq_len < pixels:
        raise ValueError(
            f"data.seq_len={config.seq_len} would truncate pathfinder/"
            f"{builder.builder_config.name} images of {pixels} pixels"
        )
    return representations.image_tokens(builder, config)


# 'tokens' (LRA's pixel sequence) or 'image' (`[size, size, 1]` floats in [0, 1]).
SPEC = DatasetSpec(
    builder=builder_of_configs(Pathfinder),
    representations={"tokens": _tokens, "image": representations.images},
    default="tokens",
)
