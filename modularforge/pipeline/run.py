"""The three phases end to end, resumable: trunk, experts one at a time, routers.

    phase 1  trunk + temporary FFNs on the mixed corpus -> shared.safetensors, phase1-ffn.safetensors
    phase 2  one expert per domain, trunk frozen        -> experts/expert-{i}-{domain}.safetensors
    phase 3  MixtureOfExperts, only the routers train   -> router-top{k}.safetensors
    mixing   router + attention + norms on mixed data   -> mixed/{shared,router-top1}.safetensors
    (+)      a dense baseline on as many tokens         -> dense/{shared,ffn}.safetensors
    (+)      evaluation: perplexity matrix, comparison  -> manifest.json

Why a pipeline object and not a notebook cell: the point of the design is that each
expert is trained alone, on a machine that may disappear. So every unit of work
writes its result atomically, records it (file, SHA-256, trunk fingerprint, timing,
peak memory) in `manifest.json`, and a rerun verifies what is on disk before it
skips anything: a file that no longer loads is retrained, and said so in the log.
A stopped expert run resumes from its training-state checkpoint bit-identically.

This module holds the settings and the order of the work; each unit of work (the
trunk, one expert, one router, the dense baseline, the evaluation) is one function
in `phases` / `evaluation`, and where files live is `folders`.

Memory (`modularforge.pipeline.memory_check`): for each expert run the pipeline measures
one training step of the trunk + a fresh expert, and counts the bytes of every tensor
alive in the process before the real run starts and after its expert is saved and
dropped. The live counts see anything the process still holds, so the flatness check
built on them fails when finished experts are kept (the tests show it failing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from modularforge.files.run_lock import locked_folder
from modularforge.mixture.branching import INITS
from modularforge.mixture.mixing import TRAINABLE
from modularforge.model.config import ModelConfig
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.pipeline.evaluation import (
    ORACLE_ROW,
    PHASE1_ROW,
    UNIFORM_ROW,
    evaluation_models,
    evaluation_phase,
)
from modularforge.pipeline.folders import (
    WritableCheck,
    data_fingerprint,
    expert_path,
    phase1_ffn_path,
    prepare_out_dir,
    router_path,
    sha256_file,
    shared_path,
    state_path,
)
from modularforge.pipeline.load import (
    load_pipeline_dense,
    load_pipeline_experts,
    load_pipeline_mixture,
    load_pipeline_phase1,
    load_pipeline_shared,
)
from modularforge.pipeline.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    ManifestError,
    read_manifest,
    write_manifest,
)
from modularforge.pipeline.memory_check import (
    live_tensor_bytes,
    measure_expert_step,
    memory_flatness,
    memory_table,
    plot_memory_flatness,
)
from modularforge.pipeline.mixing import load_pipeline_mixed, mixing_phase
from modularforge.pipeline.phases import dense_phase, expert_phase, router_phase, shared_phase
from modularforge.training.data import list_domains, load_mixed, require_known_domains
from modularforge.training.preflight import check_pipeline_settings, preflight
from modularforge.training.train import TrainSettings, resolve_device

#: Settings that may change between a run and its resumption without invalidating it.
#: `eval_max_batches` only changes the evaluation, which reruns when it changes.
_FREE_SETTINGS = {"progress", "device", "top_k", "eval_max_batches"}


@dataclass(frozen=True)
class PipelineSettings:
    """Everything the three phases need; the defaults run in a few minutes on 2 CPU cores."""

    preset: str = "tiny"  # model shape: ModelConfig.preset(preset)
    steps: int = 300  # phase 1 optimizer steps (shared trunk)
    expert_steps: int = 300  # phase 2 optimizer steps, per expert
    router_steps: int = 150  # phase 3 optimizer steps, per router
    top_k: tuple[int, ...] = (1, 2)  # mixtures to assemble (experts used per token)
    batch_size: int = 16  # sequences per step, every phase
    seq_len: int = 64  # tokens per sequence
    lr: float = 1e-2  # peak learning rate of phase 1 (and the dense baseline)
    expert_lr: float = 3e-3  # peak learning rate of phase 2 (a branched expert starts trained)
    router_lr: float = 1e-2  # peak learning rate of the routers
    aux_loss_weight: float = 0.01  # Switch-style load-balancing loss on the routers (0: off)
    expert_init: str = "branched"  # phase 2 starts from a copy of the phase-1 FFNs, or "fresh"
    mixing_steps: int = 60  # BTX-style mixing stage after the routers (0: none)
    mixing_trainable: str = "router+attention+norms"  # what it trains (mixing.TRAINABLE)
    mixing_lr: float = 3e-3  # peak learning rate of the mixing stage
    checkpoint_every: int = 50  # training-state checkpoint interval (0: none)
    dense_baseline: bool = True  # also train a dense model on as many tokens as the system
    eval_max_batches: int | None = None  # validation batches per domain (None: all of it)
    seed: int = 0
    device: str | None = None  # None: CUDA when present, else CPU
    progress: bool = True  # tqdm bars

    #: Fields that take one of a few names (checked with the rest by preflight).
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "expert_init": INITS,
        "mixing_trainable": TRAINABLE,
    }

    def __post_init__(self) -> None:
        check_pipeline_settings(self)  # every field, by name (modularforge.training.preflight)

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.preset(self.preset)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def train_settings(self, steps: int, lr: float | None = None) -> TrainSettings:
        return TrainSettings(
            steps=steps,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            lr=self.lr if lr is None else lr,
            warmup_steps=min(30, max(1, steps // 10)),
            seed=self.seed,
            device=self.device,
            progress=self.progress,
        )

    def dense_steps(self, n_experts: int) -> int:
        """Phase 1 + every expert + one router + the mixing stage: the system's budget, in steps."""
        return self.steps + n_experts * self.expert_steps + self.router_steps + self.mixing_steps

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["top_k"] = list(self.top_k)
        return values


@dataclass
class PipelineResult:
    """What a run produced: the directory, its manifest, and what this run did."""

    out_dir: Path
    manifest: dict[str, Any]
    events: list[str] = field(default_factory=list)  # "trained shared", "skipped expert 0", ...

    @property
    def matrix(self):
        from modularforge.training.evaluate import PerplexityMatrix

        return PerplexityMatrix.from_dict(self.manifest["phases"]["evaluation"]["matrix"])

    @property
    def comparison(self):
        from modularforge.training.evaluate import ComparisonRow, ComparisonTable

        data = self.manifest["phases"]["evaluation"]["comparison"]
        return ComparisonTable(
            rows=[ComparisonRow(**row) for row in data["rows"]],
            system_tokens=data["system_tokens"],
        )


# --------------------------------------------------------------------------- the run


def run_pipeline(
    out_dir: str | Path,
    settings: PipelineSettings = PipelineSettings(),
    log: Callable[[str], None] = print,
    domains: Sequence[str] | None = None,
    on_expert_trained: Callable[[ModuleTrainerModel], None] | None = None,
) -> PipelineResult:
    """Run (or resume) every phase into `out_dir`; see the module docstring.

    `on_expert_trained` is called with each freshly trained expert model before the
    pipeline drops it. Whatever it keeps stays in memory, and the flatness check
    sees it: the chapters use that as the check's negative control.
    """
    domains = pipeline_domains(domains)  # before phase 1 trains, not after
    preflight(settings)  # every setting, the device and the step's memory, before any write
    out = prepare_out_dir(out_dir, domains)
    with locked_folder(out):  # one run per folder, for the run's whole lifetime
        return _run_locked(out, settings, log, domains, on_expert_trained)


def pipeline_domains(domains: Sequence[str] | None) -> list[str]:
    """The domains a pipeline trains experts for: every corpus file, or a checked choice.

    Checked before anything trains or is written: a list the manifest would refuse
    later (a domain twice) must not cost a phase 1 first, and a bare string would
    otherwise be read as a list of one-letter domains.
    """
    known = list_domains()
    if domains is None:
        return known
    if isinstance(domains, str) or not all(isinstance(name, str) for name in domains):
        raise TypeError(f"domains must be a list of domain names such as {known}, got {domains!r}")
    chosen = list(domains)
    if not chosen:
        raise ValueError(f"domains is empty; choose at least one of {known}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"domains lists a domain twice ({chosen}); each domain gets one expert")
    require_known_domains(chosen)
    return chosen


def _run_locked(out, settings, log, domains, on_expert_trained) -> PipelineResult:
    config = settings.config
    manifest = read_manifest(out)
    recorded = _recorded_content(manifest)  # what a verify-only rerun must leave as it is
    inputs = data_fingerprint(config.vocab_size)
    if manifest:
        _check_same_settings(out, manifest, settings, domains)
        _check_same_data(out, manifest, inputs)
    else:
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "phases": {}}
        manifest["inputs"] = inputs  # older runs did not record it; they stay as they are
    manifest.update(
        settings=settings.to_dict(),
        config=config.to_dict(),
        domains=domains,
        tokens_per_step=settings.tokens_per_step,
    )
    phases = manifest.setdefault("phases", {})
    result = PipelineResult(out, manifest)
    started = time.perf_counter()

    def note(event: str, message: str) -> None:
        result.events.append(event)
        log(message)

    def save() -> None:
        manifest["events"] = list(result.events)
        if _recorded_content(manifest) == recorded:
            return  # only skips so far: leave the file alone (read-only storage verifies too)
        write_manifest(out, manifest)

    ready = WritableCheck(out)  # called before the first training step of this run
    mixed = load_mixed(config.vocab_size)

    # ---- phase 1: the shared trunk
    shared = shared_phase(out, settings, len(domains), mixed, phases, note, ready)
    save()
    shared.to(resolve_device(settings.device))

    # ---- phase 2: experts, one at a time
    experts_entry = phases.setdefault("experts", {})
    for index, domain in enumerate(domains):
        expert_phase(out, index, domain, settings, shared, phases, note, ready, on_expert_trained)
        save()
    expert_files = [expert_path(out, i, d) for i, d in enumerate(domains)]
    expert_hashes = [experts_entry[d]["sha256"] for d in domains]

    # ---- phase 3: routers
    routers_entry = phases.setdefault("routers", {})
    for k in settings.top_k:
        router_phase(
            out, k, settings, shared, expert_files, expert_hashes, mixed, routers_entry, note, ready
        )
        save()

    # ---- mixing stage: the top-k mixture fine-tuned on mixed data (BTX)
    mixing_phase(out, settings, mixed, phases, note, ready)
    save()

    # ---- baseline: a dense model trained on the system's whole token budget
    if settings.dense_baseline:
        dense_phase(out, settings, len(domains), mixed, phases, note, ready)
        save()

    # ---- evaluation
    evaluation_phase(out, settings, domains, mixed, phases, note, ready)
    log(result.matrix.to_text())
    manifest["seconds_this_run"] = time.perf_counter() - started
    save()
    return result


def _recorded_content(manifest: dict[str, Any]) -> str:
    """The manifest less what a rerun that only verifies changes (its log, timing, free settings).

    When this is unchanged a rerun has trained and evaluated nothing, so it does not
    rewrite `manifest.json`: a finished run can be verified from read-only storage.
    """
    kept = {k: v for k, v in manifest.items() if k not in ("events", "seconds_this_run")}
    if isinstance(kept.get("settings"), dict):
        kept["settings"] = {k: v for k, v in kept["settings"].items() if k not in _FREE_SETTINGS}
    return json.dumps(kept, sort_keys=True, default=str)


def _check_same_settings(
    out: Path, manifest: dict[str, Any], settings: PipelineSettings, domains: list[str]
) -> None:
    """Refuse to mix two different runs in one directory."""
    old = {k: v for k, v in manifest.get("settings", {}).items() if k not in _FREE_SETTINGS}
    new = {k: v for k, v in settings.to_dict().items() if k not in _FREE_SETTINGS}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if manifest.get("domains", domains) != domains:
        changed.append("domains")
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"{out} holds a pipeline run with other settings ({details}); "
            "rerun with the same settings to resume it, or choose another --out"
        )


def _check_same_data(out: Path, manifest: dict[str, Any], inputs: dict[str, str]) -> None:
    """Refuse to resume or verify a run whose tokenizer or corpus has changed since."""
    recorded = manifest.get("inputs")
    if recorded is None:
        return  # a run from before the fingerprint: nothing to compare with
    changed = sorted(k for k in set(recorded) | set(inputs) if recorded.get(k) != inputs.get(k))
    if changed:
        raise ValueError(
            f"{out} was trained on other data: {', '.join(changed)} changed since (SHA-256 "
            "differs from the manifest's), so its checkpoints no longer match what a rerun "
            "would train; restore those files, or choose another --out"
        )


def summarize_seconds(manifest: dict[str, Any]) -> dict[str, float]:
    """Wall-clock seconds of each phase (as recorded when it ran)."""
    phases = manifest["phases"]
    out = {"phase 1 (shared)": phases["shared"]["seconds"]}
    out["phase 2 (experts)"] = sum(e["seconds"] for e in phases["experts"].values())
    out["phase 3 (routers)"] = sum(e["seconds"] for e in phases.get("routers", {}).values())
    if "mixing" in phases:
        out["mixing stage"] = phases["mixing"]["seconds"]
    if "dense" in phases:
        out["dense baseline"] = phases["dense"]["seconds"]
    if "evaluation" in phases:
        out["evaluation"] = phases["evaluation"]["seconds"]
    return out


__all__ = [
    "MANIFEST_NAME",
    "ManifestError",
    "PipelineResult",
    "PipelineSettings",
    "ORACLE_ROW",
    "PHASE1_ROW",
    "UNIFORM_ROW",
    "evaluation_models",
    "expert_path",
    "live_tensor_bytes",
    "load_pipeline_dense",
    "load_pipeline_experts",
    "load_pipeline_mixed",
    "load_pipeline_mixture",
    "load_pipeline_shared",
    "load_pipeline_phase1",
    "measure_expert_step",
    "memory_flatness",
    "memory_table",
    "phase1_ffn_path",
    "plot_memory_flatness",
    "read_manifest",
    "router_path",
    "run_pipeline",
    "sha256_file",
    "shared_path",
    "state_path",
    "summarize_seconds",
]
