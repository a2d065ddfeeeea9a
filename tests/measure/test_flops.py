"""Attention FLOPs are counted alike on the fused and the math path, and match the formula."""

from __future__ import annotations

import pytest
from torch.utils.flop_counter import FlopCounterMode

from modularforge.lean.step import LeanOptions, lean_training_step
from modularforge.measure.bench import plain_step
from modularforge.measure.flops import (
    attention_flops,
    attention_step_flops,
    count_flops,
    linear_flops,
)
from modularforge.measure.peak import build_step
from modularforge.model.config import ModelConfig

CONFIG = ModelConfig.tiny().replace(n_layers=3, dropout=0.1, expert_dropout=0.1)
LEAN = LeanOptions(micro_batch_size=1, loss_chunk=8, checkpoint_layers=True, recompute_expert=True)


def _counts(frozen: bool, path: str, dropout: bool, options: LeanOptions | None):
    model, optimizer, batch = build_step(CONFIG, 2, 16, frozen, "adamw", 0, path, dropout)
    if options is None:
        return count_flops(lambda: plain_step(model, batch, optimizer))
    return count_flops(lambda: lean_training_step(model, batch, optimizer, options))


@pytest.mark.parametrize("options", [None, LEAN], ids=["plain", "lean"])
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "full"])
def test_fused_attention_counts_what_the_math_path_counts(frozen, options):
    fused = _counts(frozen, "fused", False, options)
    math = _counts(frozen, "math", False, options)
    # The math path's attention is plain bmm, which FlopCounterMode knows; the fused
    # kernel is counted by our formula. They agree to the FLOP, and so does the rest.
    assert "aten.bmm" in math and "aten.bmm" not in fused
    assert attention_flops(fused) == math["aten.bmm"] == attention_flops(math) > 0
    assert linear_flops(fused) == linear_flops(math)
    assert sum(fused.values()) == sum(math.values())


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "full"])
def test_the_analytic_attention_count_equals_flopcountermode_on_the_math_path(frozen):
    math = _counts(frozen, "math", False, None)
    assert math["aten.bmm"] == attention_step_flops(CONFIG, 2, 16, frozen)
    # Trunk dropout changes no matmul: the same count with it on.
    if not frozen:
        assert _counts(False, "math", True, None)["aten.bmm"] == math["aten.bmm"]


def test_without_the_formula_the_fused_kernel_counts_zero():
    """The negative control: PyTorch's own counter misses fused CPU attention entirely."""
    model, optimizer, batch = build_step(CONFIG, 2, 16, False, "adamw", 0, "fused", False)
    with FlopCounterMode(display=False) as counter:
        plain_step(model, batch, optimizer)
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert attention_flops(by_op) == 0
    assert attention_flops(_counts(False, "fused", False, None)) > 0
