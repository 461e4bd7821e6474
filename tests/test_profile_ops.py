"""Tests of scripts/profile_ops.py: HLO parsing (FLOPs of dots by hand) and a traced profile."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp

from helpers import SCRIPT_DIR, load_script

SCRIPT = os.path.join(SCRIPT_DIR, "profile_ops.py")
profile_ops = load_script("profile_ops")

HLO = """
%fused_computation (param_0: f32[8,32], param_1: f32[32,16]) -> f32[8,16] {
  %param_0 = f32[8,32]{1,0} parameter(0)
  %param_1 = f32[32,16]{1,0} parameter(1)
  ROOT %dot_general.0 = f32[8,16]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (a: f32[4,128,64], b: f32[4,384,64], c: f32[8,32], d: f32[32,16]) -> f32[4,128,384] {
  %a = f32[4,128,64]{2,1,0} parameter(0)
  %b = f32[4,384,64]{2,1,0} parameter(1)
  %c = f32[8,32]{1,0} parameter(2)
  %d = f32[32,16]{1,0} parameter(3)
  %ynn_fusion = f32[8,16]{1,0} fusion(%c, %d), kind=kCustom, calls=%fused_computation
  %neg = f32[4,384,64]{2,1,0} negate(%b)
  ROOT %dot.3 = f32[4,128,384]{2,1,0} dot(%a, %neg), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={2}
}
"""


def test_hlo_ops_counts_the_flops_of_dots_and_of_fusions_that_contain_them():
    ops = profile_ops.hlo_ops(HLO)
    assert {"a", "b", "neg", "dot.3", "ynn_fusion", "dot_general.0"} <= set(ops)
    assert ops["dot.3"].opcode == "dot" and ops["neg"].opcode == "negate"
    assert ops["dot.3"].flops == 2 * 4 * 128 * 384 * 64  # 2 x output elements x contracted 64
    assert ops["ynn_fusion"].flops == 2 * 8 * 16 * 32
    assert ops["neg"].flops is None


def test_profile_finds_the_product_once_per_call_at_its_flops():
    x = jnp.ones((256, 128), jnp.float32)
    y = jnp.ones((128, 64), jnp.float32)
    ops, wall_us = profile_ops.profile(lambda x, y: jnp.tanh(x @ y), (x, y), calls=3)
    products = [op for op in ops if op.flops is not None]
    assert len(products) == 1  # a dot, or a library fusion holding it
    assert products[0].flops == 2 * 256 * 64 * 128 and products[0].count == 3
    assert all(op.total_us > 0 for op in ops)
    assert wall_us > 0


def test_script_prints_a_table_for_a_registered_mechanism():
    out = subprocess.run(
        [sys.executable, SCRIPT, "--mechanism=dense", "--length=64", "--heads=2", "--head_dim=16",
         "--calls=2", "--top=5"], capture_output=True, text=True, check=True, timeout=300).stdout
    lines = out.splitlines()
    assert lines[0].startswith("dense fwd_bwd, [B, T, N, H] = [1, 64, 2, 16]")
    assert lines[1] == "| op | kind | ms per call | runs per call | GFLOP/s |"
    rows = [line for line in lines[3:] if line.startswith("| ")]
    assert 1 <= len(rows) <= 5
    assert any(row.split("|")[5].strip() for row in rows)  # a product with its GFLOP/s


def test_calls_below_one_is_an_error():
    result = subprocess.run([sys.executable, SCRIPT, "--mechanism=dense", "--calls=0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--calls must be >= 1, got 0" in result.stderr
