"""Every setting is checked before any training, and a corrected rerun continues (item 5)."""

import dataclasses
import math

import pytest

from modularforge.cli.main import main
from modularforge.model.config import ModelConfig
from modularforge.pipeline.run import PipelineSettings, run_pipeline
from modularforge.training.preflight import SettingsError, check_device, check_step_memory
from modularforge.training.train import TrainSettings, resolve_device

FAST = dict(
    steps=2, expert_steps=2, router_steps=1, batch_size=2, seq_len=16, top_k=(1,),
    checkpoint_every=1, eval_max_batches=1, dense_baseline=False, progress=False,
)  # fmt: skip

BAD_PIPELINE = [
    ("eval_max_batches", 0), ("eval_max_batches", -1), ("eval_max_batches", 1.5),
    ("aux_loss_weight", math.nan), ("aux_loss_weight", -0.1), ("aux_loss_weight", math.inf),
    ("lr", math.inf), ("lr", math.nan), ("lr", 0.0), ("lr", -1e-3), ("router_lr", math.inf),
    ("router_lr", 0), ("steps", 0), ("steps", -1), ("steps", 1.5), ("steps", True),
    ("expert_steps", 0), ("router_steps", -3), ("batch_size", 0), ("seq_len", 0),
    ("seq_len", 129), ("checkpoint_every", -1), ("seed", -1), ("seed", 2**64),
    ("top_k", (3,)), ("top_k", ()), ("device", "bogus"), ("device", "meta"), ("device", ""),
    ("device", "cuda:99"), ("preset", "huge"), ("dense_baseline", "yes"), ("progress", None),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BAD_PIPELINE)
def test_a_bad_pipeline_setting_is_refused_by_name(field, value):
    with pytest.raises(ValueError) as caught:
        PipelineSettings(**{**FAST, field: value})
    words = str(caught.value)
    assert field in words or "device" in words or "preset" in words


BAD_TRAIN = [
    ("lr", math.inf), ("lr", math.nan), ("grad_clip", 0.0), ("grad_clip", math.nan),
    ("betas", (1.0, 0.9)), ("betas", (0.9,)), ("weight_decay", -1.0), ("warmup_steps", -1),
    ("min_lr_ratio", 2.0), ("seed", -1), ("device", "meta"), ("eval_every", 0),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BAD_TRAIN)
def test_a_bad_train_setting_is_refused_by_name(field, value):
    with pytest.raises(SettingsError, match=rf"TrainSettings\.{field}|device"):
        TrainSettings(**{field: value})


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:99", "", "xla"])
def test_resolve_device_refuses_what_cannot_train(device):
    with pytest.raises(SettingsError, match="device"):
        resolve_device(device)


def test_good_devices_pass():
    assert check_device("cpu").type == "cpu" and check_device(None) is None


@pytest.mark.parametrize("batch", [10**6, 10**8])
def test_a_batch_that_cannot_fit_the_machine_is_refused(batch):
    with pytest.raises(SettingsError, match="lower --batch-size"):
        check_step_memory(ModelConfig.tiny(), batch, 128, "cpu")
    assert check_step_memory(ModelConfig.tiny(), 2, 16, "cpu") > 0


@pytest.mark.parametrize(
    "option",
    [["--eval-max-batches", "0"], ["--aux-loss-weight", "nan"], ["--aux-loss-weight", "-1"],
     ["--aux-loss-weight", "inf"], ["--device", "meta"], ["--device", "bogus"],
     ["--batch-size", "100000000"], ["--seq-len", "100000"]],
)  # fmt: skip
def test_the_cli_refuses_before_writing_anything(tmp_path, capsys, option):
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), "--no-progress", *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()  # nothing written, so nothing blocks the corrected rerun


def test_a_corrected_rerun_continues(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="eval_max_batches"):
        run_pipeline(out, PipelineSettings(**{**FAST, "eval_max_batches": 0}))
    assert not out.exists()
    first = run_pipeline(out, PipelineSettings(**FAST), log=lambda _: None)
    assert "trained shared" in first.events
    again = dataclasses.replace(PipelineSettings(**FAST), eval_max_batches=2)
    second = run_pipeline(out, again, log=lambda _: None)
    assert [e for e in second.events if e.startswith("trained")] == []
    assert second.events[-1] == "evaluated"
