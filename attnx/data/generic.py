"""Any other TFDS dataset by name (lm1b, imdb_reviews, cifar10, mnist, ...), its task inferred
from its features.

Representations (`data.representation`):
- 'tokens' (the default): with a `data.label_key` feature, 'classification' of the
  `data.image_key` image (grayscale + 1) if there is one, else of the `data.text_key` text
  (bytes + 1); without a label, a byte-level 'lm' over the `data.text_key` documents, each
  followed by b'\\n'.
- 'image': 'image_classification' of the `data.image_key` images `[H, W, C]`.
- 'video': 'video_classification' of the `data.image_key` clips `[T, H, W, C]`
  (`data.num_frames` frames each).
"""

from __future__ import annotations

import ml_collections
import tensorflow_datasets as tfds

from attnx.data import representations
from attnx.data.spec import DatasetSpec, Served


def _builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """`tfds.builder(data.name)` with `data.builder_config` and `data.data_dir`."""
    return tfds.builder(config.name, config=config.builder_config, data_dir=config.data_dir)


def _tokens(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """Token classification of an image or a text if there is a label, else a byte LM."""
    features = builder.info.features
    if config.label_key not in features:
        return representations.byte_lm(b"\n")(builder, config)
    if config.image_key in features:
        return representations.image_tokens(builder, config)
    return representations.text_tokens(builder, config)


SPEC = DatasetSpec(
    builder=_builder,
    representations={
        "tokens": _tokens, "image": representations.images, "video": representations.clips,
    },
    default="tokens",
)
