r"""Kill a training run with SIGKILL at random moments, resume it each time, and compare the end
with an uninterrupted run of the same config.

    python scripts/chaos_resume.py --config=configs/transformer_lm.py:smoke --kills=10 \
        [--workdir=runs/chaos] [--seed=0] [--config.num_train_steps=60 ...]

Arguments it does not know are passed to `python -m attnx.train`. Every third start sets the
test-only `ATTNX_FAULT_INJECT=kill_in_save`, so that the run kills itself half-way through
writing a checkpoint; the others are killed after a random number of logged steps (0: at a
random moment of start-up) and a random delay. It prints `identical` when the final params,
optimizer state, model state and step equal the uninterrupted run's bit for bit, else the first
differing array (and exits 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Chaos:
    """What a chaos run did: kills, of which inside a checkpoint write, and every log."""

    kills: int = 0
    inside_write: int = 0
    logs: list[str] = dataclasses.field(default_factory=list)


def _train(args: list[str], workdir: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "attnx.train", *args, f"--workdir={workdir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)


def _kill_after(proc: subprocess.Popen, steps: int, delay: float, lines: list[str]) -> bool:
    """SIGKILL `proc` `delay` seconds after it logged `steps` more steps (at once if 0);
    False if it ended by itself first."""
    seen = 0
    while seen < steps:
        line = proc.stdout.readline()
        if not line:
            return False
        lines.append(line)
        seen += line.startswith("step ")
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    return True


def run_to_end(args: list[str], workdir: str, env: dict[str, str]) -> str:
    """Train until the run finishes; its log. Raises RuntimeError if it fails."""
    proc = _train(args, workdir, env)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"training in {workdir} failed ({proc.returncode}):\n{out[-3000:]}")
    return out


def chaos(args: list[str], workdir: str, *, kills: int, seed: int,
          env: dict[str, str] | None = None) -> Chaos:
    """Start, kill and restart `attnx.train args` in `workdir` until `kills` kills were made
    (or the run finished), then run it to its end."""
    rng, result = random.Random(seed), Chaos()
    env = dict(os.environ if env is None else env)
    env.pop("ATTNX_FAULT_INJECT", None)
    while result.kills < kills:
        in_write = result.kills % 3 == 2
        proc = _train(args, workdir, dict(env, ATTNX_FAULT_INJECT="kill_in_save")
                      if in_write else env)
        lines: list[str] = []
        if in_write:
            lines += proc.stdout.readlines()
            killed = proc.wait() == -signal.SIGKILL
            left = glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))
            result.inside_write += killed and bool(left)
        else:
            steps = rng.randint(0, 6)
            killed = _kill_after(proc, steps, rng.uniform(0, 8.0 if steps == 0 else 0.3), lines)
            proc.wait()
            lines += proc.stdout.readlines()
        result.logs.append("".join(lines))
        if not killed:
            break
        result.kills += 1
    result.logs.append(run_to_end(args, workdir, env))
    return result


def _final_state(workdir: str) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                               item_handlers={"state": ocp.StandardCheckpointHandler()}) as m:
        return m.restore(m.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))["state"]


def first_difference(workdir_a: str, workdir_b: str) -> str | None:
    """The first array of the final train states of two workdirs that differs, or None."""
    import jax

    leaves_a = jax.tree_util.tree_flatten_with_path(_final_state(workdir_a))[0]
    leaves_b = dict(jax.tree_util.tree_flatten_with_path(_final_state(workdir_b))[0])
    for path, a in leaves_a:
        name = jax.tree_util.keystr(path)
        if path not in leaves_b:
            return f"{name}: absent from {workdir_b}"
        a, b = np.asarray(a), np.asarray(leaves_b[path])
        if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
            return f"{name}: {a.ravel()[:4]} vs {b.ravel()[:4]}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="as for python -m attnx.train")
    parser.add_argument("--workdir", default="runs/chaos", help="holds killed/ and straight/")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    known, train_args = parser.parse_known_args()
    args = [f"--config={known.config}", *train_args]
    killed, straight = (os.path.join(known.workdir, n) for n in ("killed", "straight"))
    for workdir in (killed, straight):
        if os.path.exists(workdir):
            parser.error(f"{workdir} exists; pass a fresh --workdir")
    result = chaos(args, killed, kills=known.kills, seed=known.seed)
    run_to_end(args, straight, dict(os.environ))
    print(f"{result.kills} kills ({result.inside_write} inside a checkpoint write)")
    difference = first_difference(straight, killed)
    print("identical" if difference is None else f"first differing parameter: {difference}")
    return 0 if difference is None else 1


if __name__ == "__main__":
    sys.exit(main())
