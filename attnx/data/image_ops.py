"""Image preprocessing for datasets of images of any size (ImageNet): NumPy and Pillow, per example.

- `eval_crop(image, size)`: resize the shorter side to round(size / CROP_FRACTION) (256 for 224),
  then cut the central size x size square (the standard ImageNet evaluation crop).
- `train_crop(image, size, rng)`: Inception's random resized crop (Szegedy et al., 2015): a window
  of a random share of the area in INCEPTION_AREA and aspect ratio in INCEPTION_RATIO (log-uniform),
  up to 10 tries, else the central crop of the largest window of an allowed ratio; resized to
  size x size and flipped left-right with probability 1/2.
- `randaugment(image, layers, magnitude, rng)`: RandAugment (Cubuk et al., 2020), `layers`
  operations of the paper's 14 drawn at random, each at `magnitude`.
- `dihedral(image, rng)`: one of the 8 symmetries of the square (a rotation by a multiple of 90
  degrees, transposed or not), uniformly: for tasks whose label no rotation or reflection changes
  (Pathfinder's connectivity); square images only.
All take uint8 `[H, W, C]` (C = 1 or 3) and return uint8 (`[size, size, C]` for the crops);
resizing is bilinear (Pillow). The random ones are functions of the generator they are given, so
a dataset can make them functions of (seed, batch position, example): resumable, the same on
every process.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

CROP_FRACTION = 0.875
INCEPTION_AREA = (0.08, 1.0)
INCEPTION_RATIO = (3 / 4, 4 / 3)
_TRIES = 10


def _check(image: np.ndarray, size: int) -> None:
    if image.ndim != 3 or image.shape[-1] not in (1, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [height, width, 1 or 3], got {image.dtype} "
                         f"{image.shape}")
    if size < 1:
        raise ValueError(f"data.image_size must be >= 1, got {size}")


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 `[H, W, C]` -> uint8 `[height, width, C]`, bilinear."""
    if image.shape[:2] == (height, width):
        return image
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((width, height), Image.BILINEAR))
    return out[..., None] if channels == 1 else out


def _central(image: np.ndarray, height: int, width: int) -> np.ndarray:
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width]


def eval_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The shorter side resized to round(size / CROP_FRACTION), then the central square."""
    _check(image, size)
    h, w = image.shape[:2]
    short = round(size / CROP_FRACTION)
    scale = short / min(h, w)
    resized = resize(image, max(size, round(h * scale)), max(size, round(w * scale)))
    return _central(resized, size, size)


def train_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Inception's random resized crop of `image` to size x size, then a random left-right flip."""
    _check(image, size)
    h, w = image.shape[:2]
    log_ratios = (math.log(INCEPTION_RATIO[0]), math.log(INCEPTION_RATIO[1]))
    window = None
    for _ in range(_TRIES):
        area = h * w * rng.uniform(*INCEPTION_AREA)
        ratio = math.exp(rng.uniform(*log_ratios))  # width / height
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            window = image[top : top + ch, left : left + cw]
            break
    if window is None:  # the central crop of the whole image, its ratio clamped to the range
        ratio = min(max(w / h, INCEPTION_RATIO[0]), INCEPTION_RATIO[1])
        cw, ch = (w, round(w / ratio)) if w / h < ratio else (round(h * ratio), h)
        window = _central(image, min(ch, h), min(cw, w))
    out = resize(window, size, size)
    return out[:, ::-1] if rng.random() < 0.5 else out


# ----------------------------------------------------------------------------- RandAugment

# RandAugment (Cubuk et al., 2020): the 14 operations of the paper, each with its strength at
# magnitude 10 (the paper's scale; larger magnitudes, e.g. MaxViT's 15, extrapolate linearly, as
# the TensorFlow implementation the official code uses does). Signed strengths are negated with
# probability 1/2. Translations are a share of the image side (AutoAugment's 150 px of 331).
RANDAUGMENT_OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color",
                   "posterize", "contrast", "brightness", "sharpness", "shear_x", "shear_y",
                   "translate_x", "translate_y")
_MAX_ROTATE, _MAX_SHEAR, _MAX_TRANSLATE, _MAX_ENHANCE = 30.0, 0.3, 150 / 331, 0.9
_GREY = 128  # fill of the pixels geometric operations uncover


def _affine(pil: Image.Image, coefficients: tuple[float, ...]) -> Image.Image:
    fill = _GREY if pil.mode == "L" else (_GREY,) * 3
    return pil.transform(pil.size, Image.AFFINE, coefficients, resample=Image.BILINEAR,
                         fillcolor=fill)


def apply_op(image: np.ndarray, op: str, magnitude: float, sign: float = 1.0) -> np.ndarray:
    """One RandAugment operation at `magnitude` (0..10, larger extrapolates), uint8 `[H, W, C]`
    -> uint8 `[H, W, C]`; `sign` (+1 or -1) orients the signed ones (rotations, shears,
    translations, enhancements)."""
    if op not in RANDAUGMENT_OPS:
        raise ValueError(f"unknown RandAugment op {op!r}; ops: {', '.join(RANDAUGMENT_OPS)}")
    level = magnitude / 10.0
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    w, h = pil.size
    if op == "autocontrast":
        pil = ImageOps.autocontrast(pil)
    elif op == "equalize":
        pil = ImageOps.equalize(pil)
    elif op == "rotate":
        pil = pil.rotate(sign * _MAX_ROTATE * level, resample=Image.BILINEAR,
                         fillcolor=_GREY if channels == 1 else (_GREY,) * 3)
    elif op == "solarize":  # invert the pixels at or above a threshold falling from 256 to 0
        pil = ImageOps.solarize(pil, threshold=max(0, round(256 * (1 - level))))
    elif op == "posterize":  # keep 8 bits at magnitude 0 down to 4 at 10
        pil = ImageOps.posterize(pil, bits=int(min(8, max(1, round(8 - 4 * level)))))
    elif op in ("color", "contrast", "brightness", "sharpness"):
        enhancer = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
                    "brightness": ImageEnhance.Brightness,
                    "sharpness": ImageEnhance.Sharpness}[op]
        pil = enhancer(pil).enhance(max(0.0, 1.0 + sign * _MAX_ENHANCE * level))
    elif op == "shear_x":
        pil = _affine(pil, (1, sign * _MAX_SHEAR * level, 0, 0, 1, 0))
    elif op == "shear_y":
        pil = _affine(pil, (1, 0, 0, sign * _MAX_SHEAR * level, 1, 0))
    elif op == "translate_x":
        pil = _affine(pil, (1, 0, sign * _MAX_TRANSLATE * level * w, 0, 1, 0))
    elif op == "translate_y":
        pil = _affine(pil, (1, 0, 0, 0, 1, sign * _MAX_TRANSLATE * level * h))
    out = np.asarray(pil)
    return out[..., None] if channels == 1 else out


def randaugment(image: np.ndarray, layers: int, magnitude: float,
                rng: np.random.Generator) -> np.ndarray:
    """`layers` operations drawn uniformly (with replacement) from RANDAUGMENT_OPS, each at
    `magnitude` with a random sign, applied in turn: uint8 `[H, W, C]` -> uint8 `[H, W, C]`."""
    for _ in range(layers):
        op = RANDAUGMENT_OPS[int(rng.integers(len(RANDAUGMENT_OPS)))]
        image = apply_op(image, op, magnitude, 1.0 if rng.random() < 0.5 else -1.0)
    return image


def dihedral(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Symmetry number k ~ U{0..7} of the square: `image` rotated by (k % 4) * 90 degrees
    counter-clockwise, then transposed if k >= 4. `[S, S, C]` -> `[S, S, C]`, same dtype."""
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"dihedral augmentation needs square images [S, S, C], got {image.shape}")
    k = int(rng.integers(8))
    image = np.rot90(image, k % 4, axes=(0, 1))
    return np.ascontiguousarray(image.transpose(1, 0, 2) if k >= 4 else image)
