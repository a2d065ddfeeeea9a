"""The book's short answer to "should you train in parts?", read from its stored studies.

The front page answers the question before the chapters prove it. Nothing here
trains. Memory comes from the lean benchmark at the design document's reference
model (``book/data/bench-cpu-seed-lean.json``, chapters 6 and 6b), which times
and measures one expert step and one whole-model step that differ in nothing
but what trains. Quality comes from the mixture study that chapter 11 runs and
stores (``book/data/mixture-study-5seeds.json``), with the verdicts of chapter 11's
paired table (`measure.paired`: per-seed differences and their 95 % interval), so
the front page and chapter 11 cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modularforge.chapters.ch11_mixture_study import arm_spreads
from modularforge.measure.paired import PairedDifference, paired_difference

#: What must be the same in the benchmark's expert and full steps: only what trains differs.
COMPARED = ("step", "attention_path", "trunk_dropout", "optimizer")
#: The mixtures that need no domain label at inference (their router picks the experts).
SELF_ROUTING = ("mix_router", "mix_shared")
#: The study's memory rows for a step that trains one expert and one that trains everything.
EXPERT_ROW = "expert step (phase 2, frozen trunk)"
FULL_ROW = "phase 1 step (trunk + FFN trained whole)"


@dataclass(frozen=True)
class PartsAnswer:
    """What the stored study says about memory and quality, trained in parts against whole."""

    reference_tokens: str  # the benchmark's batch, "16 × 512"
    reference_expert_peak_mb: float  # one lean step of one expert, the reference model
    reference_full_peak_mb: float  # the same step training every weight
    preset: str  # the quality study's model preset
    n_seeds: int
    expert_peak_mb: float  # one training step of one expert against the frozen trunk
    full_peak_mb: float  # one training step of the whole model
    mixture_arm: str  # the best mixture that routes by itself
    mixture_loss: float  # its mean mixed validation loss over seeds, nats
    mixture_loss_std: float  # the seeds' sample standard deviation
    dense_loss: float  # dense, trained on as many tokens
    dense_loss_std: float
    dense_eqflops_loss: float  # dense, trained for as many FLOPs as the mixture
    dense_eqflops_loss_std: float
    vs_dense: PairedDifference  # mixture − dense, seed by seed, at equal tokens
    vs_dense_eqflops: PairedDifference  # mixture − dense trained for the mixture's FLOPs

    @property
    def at_equal_tokens(self) -> str:
        """The paired verdict on mixture vs dense: lower, higher or inconclusive."""
        return self.vs_dense.verdict

    @property
    def at_equal_flops(self) -> str:
        return self.vs_dense_eqflops.verdict

    @property
    def reference_ratio(self) -> float:
        """A whole-model step's peak over an expert step's, at the reference model."""
        return self.reference_full_peak_mb / self.reference_expert_peak_mb

    @property
    def study_ratio(self) -> float:
        """The same ratio at the quality study's small preset."""
        return self.full_peak_mb / self.expert_peak_mb


def parts_answer(study: Mapping[str, Any], bench: Mapping[str, Any]) -> PartsAnswer:
    """The answer the stored benchmark and mixture study give (chapters 6, 6b and 11)."""
    expert, full = (
        {k: v for k, v in bench["results"][arm].items() if k in COMPARED}
        for arm in ("expert", "full")
    )
    if full != expert:
        raise ValueError(
            f"the benchmark's full step ({full}) differs from its expert step ({expert})"
        )
    spreads = arm_spreads(study)
    arm = min(SELF_ROUTING, key=lambda name: spreads[name].mean)
    rows = study["memory"]["rows"]
    return PartsAnswer(
        reference_tokens=f"{bench['batch_size']} × {bench['seq_len']}",
        reference_expert_peak_mb=bench["results"]["expert"]["memory"]["peak"] / 1e6,
        reference_full_peak_mb=bench["results"]["full"]["memory"]["peak"] / 1e6,
        preset=study["settings"]["preset"],
        n_seeds=len(study["settings"]["seeds"]),
        expert_peak_mb=rows[EXPERT_ROW]["peak_bytes"] / 1e6,
        full_peak_mb=rows[FULL_ROW]["peak_bytes"] / 1e6,
        mixture_arm=arm,
        mixture_loss=spreads[arm].mean,
        mixture_loss_std=spreads[arm].std,
        dense_loss=spreads["dense"].mean,
        dense_loss_std=spreads["dense"].std,
        dense_eqflops_loss=spreads["dense_eqflops"].mean,
        dense_eqflops_loss_std=spreads["dense_eqflops"].std,
        vs_dense=paired_difference(study["arms"][arm]["mixed"], study["arms"]["dense"]["mixed"]),
        vs_dense_eqflops=paired_difference(
            study["arms"][arm]["mixed"], study["arms"]["dense_eqflops"]["mixed"]
        ),
    )


#: How a verdict on "mixture vs dense" (lower loss is better) reads as an answer.
ANSWER_WORDS = {
    "lower": "yes: the mixture reaches a lower loss",
    "higher": "no: dense reaches a lower loss",
    "inconclusive": "not settled: the paired interval includes zero",
}


@dataclass(frozen=True)
class ParallelAnswer:
    """How much running the experts on separate ranks shortens the whole run (Amdahl)."""

    arm: str
    serial_share: float  # training FLOPs of phase 1 and mixing over the arm's total
    ranks: int  # one rank per domain expert
    bound: float  # the whole run's speed-up at most: 1 / (f + (1 - f) / R)


def parallel_answer(study: Mapping[str, Any], arm: str = "mix_shared") -> ParallelAnswer:
    """Amdahl's bound for `arm` with one rank per expert, FLOPs standing in for time.

    Phase 1 and the mixing stage run once, on one rank; only the experts' phase is
    split. FLOPs are a proxy for time: an expert step runs at a lower FLOP rate than a
    dense one (small matrices), which makes the true bound a little better than this.
    """
    phases = study["arms"][arm]["phases"]
    total = sum(p["flops"] for p in phases)
    parallel = sum(p["flops"] for p in phases if p["phase"].startswith("experts"))
    serial = (total - parallel) / total
    ranks = len(study["settings"]["domains"])
    return ParallelAnswer(arm, serial, ranks, 1 / (serial + (1 - serial) / ranks))


@dataclass(frozen=True)
class NewDomainAnswer:
    """What adding a domain later cost and gained, per arm at its best rate (chapter 11b)."""

    expert_gain: float  # the frozen-trunk expert's mean gain on the new domain, nats
    expert_forgetting_max: float  # its largest change of any old domain's loss, any seed
    bit_identical: bool  # the old experts' outputs were the same bits on every seed
    finetune_gain: float
    finetune_forgetting: float  # mean over seeds and old domains, nats
    replay_gain: float
    replay_forgetting: float
    branch_gain: float  # BTM-style whole-model branch: A's run, with the old model kept
    expert_vs_replay: PairedDifference  # gain of C minus gain of B, seed by seed


def new_domain_answer(study: Mapping[str, Any]) -> NewDomainAnswer:
    """The short answer of chapter 11b's stored study (`ch11b_new_domain_report`)."""
    from modularforge.chapters.ch11b_new_domain_report import C_VS_B, arm_rows, comparisons

    rows = {row.arm: row for row in arm_rows(study)}
    experts = [rows[a] for a in ("C_expert", "C_expert_2x", "C_from_python")]
    return NewDomainAnswer(
        expert_gain=rows["C_expert"].gain.mean,
        expert_forgetting_max=max(
            max(abs(r.forgetting_max), abs(r.forgetting_mean)) for r in experts
        ),
        bit_identical=all(seed["old_outputs_bit_identical"] for seed in study["per_seed"]),
        finetune_gain=rows["A_finetune"].gain.mean,
        finetune_forgetting=rows["A_finetune"].forgetting_mean,
        replay_gain=rows["B_replay"].gain.mean,
        replay_forgetting=rows["B_replay"].forgetting_mean,
        branch_gain=rows["D_branch"].gain.mean,
        expert_vs_replay=comparisons(study)[C_VS_B],
    )
