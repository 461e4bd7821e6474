"""Learning curves of several runs on one figure, against wall-clock time and against tokens.

    python scripts/plot_runs.py --runs=runs/reformer_lm,runs/transformer_lm \
        --labels="Reformer 4K,dense Transformer 256" --out=experiments/reformer_lm/curves.png

Reads each run's TensorBoard events (`WORKDIR/tensorboard`): `eval/<metric>` (default
`bits_per_byte`). The wall-clock axis is the time since the run's first event (TensorBoard's
file header, written when the trainer opens its writer, before data loading and compilation),
so each curve includes what its run paid to start; for a run trained in one go (a resumed run's
pause would count). Tokens are steps x `batch_size x data.seq_len` from the run's
`config.json`. Prints each run's last point.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

flags.DEFINE_list("runs", None, "Run directories (each with tensorboard/ and config.json).")
flags.DEFINE_list("labels", None, "One legend label per run (default: the directory names).")
flags.DEFINE_string("metric", "bits_per_byte", "Evaluation metric: eval/<metric>.")
flags.DEFINE_string("out", "curves.png", "PNG to write.")
FLAGS = flags.FLAGS


def scalar_events(workdir: str, tag: str) -> tuple[float, list[tuple[int, float, float]]]:
    """(the run's first event's wall time, [(step, wall time, value)] of scalar `tag` by step; a
    resumed run's repeated steps keep the later value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return 0.0, []
    by_step = {e.step: (e.step, e.wall_time, e.value) for e in events.Scalars(tag)}
    return events.FirstEventTimestamp(), [by_step[s] for s in sorted(by_step)]


def tokens_per_step(workdir: str) -> int:
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    return config["batch_size"] * config["data"]["seq_len"]


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # TensorBoard's event reader is chatty
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if not FLAGS.runs:
        raise app.UsageError("--runs is required: run directories, comma separated")
    labels = FLAGS.labels or [os.path.basename(os.path.normpath(r)) for r in FLAGS.runs]
    if len(labels) != len(FLAGS.runs):
        raise app.UsageError(f"--labels has {len(labels)} entries for {len(FLAGS.runs)} runs")
    figure, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(12, 4.5))
    for workdir, label in zip(FLAGS.runs, labels):
        start, evals = scalar_events(workdir, f"eval/{FLAGS.metric}")
        if not evals:
            raise app.UsageError(f"{workdir}: no eval/{FLAGS.metric} events")
        minutes = [(t - start) / 60 for _, t, _ in evals]
        tokens = [s * tokens_per_step(workdir) / 1e6 for s, _, _ in evals]
        values = [v for _, _, v in evals]
        by_time.plot(minutes, values, marker="o", label=label)
        by_tokens.plot(tokens, values, marker="o", label=label)
        print(f"{label}: step {evals[-1][0]}, {minutes[-1]:.1f} min, {tokens[-1]:.2f}M tokens, "
              f"eval/{FLAGS.metric} {values[-1]:.3f}")
    by_time.set_xlabel("wall-clock minutes since the run started (compilation included)")
    by_tokens.set_xlabel("training tokens (millions)")
    for ax in (by_time, by_tokens):
        ax.set_ylabel(f"validation {FLAGS.metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    figure.savefig(FLAGS.out, dpi=100)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
