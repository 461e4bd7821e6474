"""TensorBoard summaries (scalars, text, images, hparams), written by process 0 only.

Built on tensorboardX so the core stays free of TensorFlow; the `tensorboard` package serves them:
`tensorboard --logdir=WORKDIR`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np


class SummaryWriter:
    """A TensorBoard event writer that is a no-op on every process but 0."""

    def __init__(self, logdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._writer = None
        if self.enabled:
            import tensorboardX  # deferred: only process 0 needs it

            self._writer = tensorboardX.SummaryWriter(logdir, flush_secs=10)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(prefix + name, float(value), step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self._writer is not None:
            # Markdown: keep whitespace of code samples by indenting as a code block.
            self._writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """`image`: `[H, W]` in [0, 1] (grayscale) or `[H, W, 3]`."""
        if self._writer is None:
            return
        image = np.asarray(image, np.float32)
        if image.ndim == 2:
            image = image[..., None]
        self._writer.add_image(tag, np.clip(image, 0.0, 1.0), step, dataformats="HWC")

    def hparams(self, hparams: Mapping[str, Any]) -> None:
        """Record the run's hyperparameters in this run's own event file (the HPARAMS tab).

        Only the session's values: TensorBoard then lists every scalar of the runs under a
        logdir as a metric, or the metrics of the one experiment summary there (`experiment`)."""
        if self._writer is None:
            return
        from tensorboardX.summary import hparams as hparams_summary

        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                 for k, v in hparams.items()}
        _, session_start, _ = hparams_summary(clean, {})
        self._writer.file_writer.add_summary(session_start)

    def experiment(self, hparams: Mapping[str, Any],
                   metrics: Sequence[tuple[str, str]]) -> None:
        """Declare the HParams dashboard of a logdir of runs: the columns `hparams` (names, with
        a value of each one's type) and the metrics `(tag, group)`, a metric's value being the
        last of scalar `tag` in each session's run directory `<session>/<group>`."""
        if self._writer is None:
            return
        from tensorboardX.proto import api_pb2, plugin_hparams_pb2
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

        def kind(value: Any) -> str:
            if isinstance(value, bool):
                return "DATA_TYPE_BOOL"
            return "DATA_TYPE_FLOAT64" if isinstance(value, (int, float)) else "DATA_TYPE_STRING"

        experiment = api_pb2.Experiment(
            hparam_infos=[api_pb2.HParamInfo(name=k, type=api_pb2.DataType.Value(kind(v)))
                          for k, v in hparams.items()],
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag, group=group))
                          for tag, group in metrics])
        content = plugin_hparams_pb2.HParamsPluginData(experiment=experiment, version=0)
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="hparams", content=content.SerializeToString()))
        self._writer.file_writer.add_summary(
            Summary(value=[Summary.Value(tag="_hparams_/experiment", metadata=metadata)]))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
