"""The analytic budget equals what a real training step allocates."""

import pytest
import torch

from modularforge import ModelConfig
from modularforge.measure import memory
from modularforge.measure.memory import memory_budget, static_budget
from modularforge.plots.memory_plots import measure_step


def measured_step(config: ModelConfig, frozen: bool, batch: int, seq: int, **settings):
    """A seeded model's second training step (the first warms up BLAS and AdamW state)."""
    return measure_step(config, batch, seq, frozen, seed=0, **settings)


CASES = [
    pytest.param(ModelConfig.tiny(), 4, 64, id="tiny"),
    pytest.param(
        ModelConfig.tiny().replace(dropout=0.1, expert_dropout=0.1), 2, 32, id="tiny-drop"
    ),
    pytest.param(ModelConfig.seed(), 1, 64, id="seed"),
]


#: (frozen, attention path, trunk dropout): the arms the book compares. The full arm
#: differs from the expert arm in requires_grad alone; the other two add one effect each.
ARMS = [
    pytest.param(True, "fused", False, id="expert"),
    pytest.param(False, "fused", False, id="full"),
    pytest.param(True, "math", False, id="expert-math"),
    pytest.param(False, "math", False, id="full-math"),
    pytest.param(False, "math", True, id="full-dropout"),
]


@pytest.mark.parametrize(("frozen", "path", "dropout"), ARMS)
@pytest.mark.parametrize(("config", "batch", "seq"), CASES)
def test_analytic_budget_equals_measured_step(config, batch, seq, frozen, path, dropout):
    settings = {"attention_path": path, "trunk_dropout": dropout}
    analytic = memory_budget(config, batch, seq, frozen=frozen, **settings)
    measured = measured_step(config, frozen, batch, seq, **settings)
    # Static terms: exact to the byte (AdamW's 4-byte step tensors are in the formula).
    assert measured.params_frozen == analytic.params_frozen
    assert measured.params_trainable == analytic.params_trainable
    assert measured.grads == analytic.grads
    assert measured.optimizer_state == analytic.optimizer_state
    # Activations: exact to the byte for this PyTorch version (CPU).
    assert measured.activations == analytic.activations
    # The peak includes the static tensors and cannot be below them.
    assert measured.peak >= analytic.static
    # A real step ran: a finite loss below the uniform guess after one update on this batch.
    assert 0 < measured.loss < torch.log(torch.tensor(float(config.vocab_size))).item() + 1


def test_seed_static_figures():
    """The figures the memory chapter prints for the seed preset."""
    frozen = memory_budget(ModelConfig.seed(), 1, 1, frozen=True)
    unfrozen = memory_budget(ModelConfig.seed(), 1, 1, frozen=False)
    assert frozen.params_frozen == 12_596_224 * 4
    assert frozen.params_trainable == frozen.grads == 8_402_944 * 4
    assert frozen.optimizer_state == 2 * 8_402_944 * 4 + 4 * 24  # exp_avg, exp_avg_sq, 24 steps
    assert round(frozen.static / memory.MB, 1) == 184.8
    assert unfrozen.params_frozen == 0
    assert unfrozen.static == 16 * 20_999_168 + 4 * (24 + 27)
    assert round(unfrozen.static / frozen.static, 2) == 1.82


def test_logits_term_at_batch_16_by_512_is_the_537_mb_the_design_leaves_out():
    budget = memory_budget(ModelConfig.seed(), 16, 512)
    log_softmax = 16 * 512 * 16384 * 4
    assert log_softmax == 536_870_912
    assert budget.details["loss (log-softmax over vocab)"] >= log_softmax
    assert budget.activations > budget.static


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "full"])
def test_activations_grow_linearly_in_batch_and_faster_than_linearly_on_the_math_path(frozen):
    config = ModelConfig.seed()
    one = memory_budget(config, 2, 256, frozen=frozen).activations
    scalar = 4  # nll_loss's total_weight: one float per step, whatever the batch
    assert memory_budget(config, 8, 256, frozen=frozen).activations - scalar == 4 * (one - scalar)
    # Fused attention: linear in T. The math path keeps (B, heads, T, T) tensors.
    fused = [memory_budget(config, 2, t, frozen=frozen).activations for t in (128, 512)]
    math = [
        memory_budget(config, 2, t, frozen=frozen, attention_path="math").activations
        for t in (128, 512)
    ]
    assert fused[1] - scalar == 4 * (fused[0] - scalar)
    assert math[1] - scalar > 4 * (math[0] - scalar)


@pytest.mark.parametrize(
    ("frozen", "path", "dropout", "message"),
    [
        (True, "fused", True, "a frozen trunk runs in eval mode"),
        (False, "fused", True, "needs attention_path='math'"),
        (False, "auto", False, "attention_path must be one of"),
    ],
)
def test_budget_rejects_settings_it_does_not_model(frozen, path, dropout, message):
    with pytest.raises(ValueError, match=message):
        memory_budget(
            ModelConfig.seed(), 1, 8, frozen=frozen, attention_path=path, trunk_dropout=dropout
        )


def test_sgd_keeps_no_optimizer_state_and_bf16_halves_the_parameters():
    config = ModelConfig.tiny()
    assert memory_budget(config, 1, 8, optimizer="sgd").optimizer_state == 0
    fp32 = memory_budget(config, 1, 8)
    bf16 = memory_budget(config, 1, 8, dtype=torch.bfloat16)
    assert bf16.params_frozen * 2 == fp32.params_frozen


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "lion"}, r"optimizer must be one of \['adam', 'adamw', 'sgd'\]"),
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"seq_len": 129}, "seq_len 129 exceeds the config's max_seq_len 128"),
    ],
)
def test_budget_rejects_bad_arguments(kwargs, message):
    args = {"config": ModelConfig.tiny(), "batch_size": 1, "seq_len": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        memory_budget(**args)


def test_document_constants_are_the_documents_figures():
    assert (memory.DOC_BUDGET_MB, memory.DOC_UNFROZEN_MB, memory.DOC_UNFROZEN_RATIO) == (
        205,
        516,
        2.5,
    )
    assert round(memory.DOC_UNFROZEN_MB / memory.DOC_BUDGET_MB, 1) == 2.5


def test_heap_tracker_sees_a_tensor_allocation():
    with memory.HeapPeakTracker() as tracker:
        big = torch.ones(4_000_000)  # 16 MB
        del big
    assert tracker.increase >= 16_000_000


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_static_budget_is_memory_budgets_static_part(frozen: bool, optimizer: str) -> None:
    config = ModelConfig.seed()
    static = static_budget(config, frozen, optimizer)
    budget = memory_budget(config, 2, 64, frozen=frozen, optimizer=optimizer)
    assert static.activations == 0
    assert static.static == budget.static
    assert (static.params_frozen, static.grads) == (budget.params_frozen, budget.grads)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        static_budget(config, frozen, "lion")
