"""The profile of a step, grouped by kind of work: categories, shares, the optimizer told apart."""

from __future__ import annotations

import pytest
import torch

from modularforge.measure.bench import build_configuration, make_optimizer, plain_step, random_batch
from modularforge.measure.step_profile import CATEGORIES, OPTIMIZER, OTHER, categorise, profile_step
from modularforge.model.config import ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread_per_module")
TINY = ModelConfig.tiny()


def test_a_training_step_is_split_by_kind() -> None:
    model = build_configuration("expert", TINY)
    optimizer, _ = make_optimizer(model)
    batch = random_batch(TINY, 2, 16)
    plain_step(model, batch, optimizer)  # warm-up: optimizer state
    result = profile_step(lambda: plain_step(model, batch, optimizer))
    seconds = result["seconds"]
    for kind in ("matmul (Linear, LM head)", "LayerNorm", "GELU", "loss (log-softmax, NLL)"):
        assert seconds[kind] > 0, kind
    assert seconds[OPTIMIZER] > 0
    assert sum(result["share"].values()) == pytest.approx(1.0)
    assert result["total_s"] == pytest.approx(sum(seconds.values()))

    # Negative control: forward and backward alone have no optimizer time.
    def forward_backward() -> None:
        logits = model(batch[0])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[1].flatten()).backward()

    assert OPTIMIZER not in profile_step(forward_backward)["seconds"]


def test_unknown_ops_fall_into_other() -> None:
    class Event:
        def __init__(self, name: str, us: float, parent=None) -> None:
            self.name, self.self_cpu_time_total, self.cpu_parent = name, us, parent

    step = Event("Optimizer.step#AdamW.step", 0)
    events = [
        Event("aten::mm", 2e6),
        Event("aten::frobnicate", 1e6),
        Event("aten::mul_", 5e5, parent=Event("aten::_fused_adamw_", 0, parent=step)),
        Event("not an aten op", 9e6),
    ]
    assert categorise(events) == {CATEGORIES["aten::mm"]: 2.0, OTHER: 1.0, OPTIMIZER: 0.5}


def test_command_prints_each_thread_count(capsys: pytest.CaptureFixture[str]) -> None:
    from modularforge.measure.step_profile import main

    argv = ["--preset", "tiny", "--batch-size", "1", "--seq-len", "8", "--threads", "1"]
    assert main([*argv, "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "expert, 1 thread(s):" in out and "matmul (Linear, LM head)" in out
