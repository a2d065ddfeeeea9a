"""The three phases end to end, resumable: trunk, experts one at a time, routers.

    phase 1  trunk + temporary FFNs on the mixed corpus -> shared.safetensors, phase1-ffn.safetensors
    phase 2  one expert per domain, trunk frozen        -> experts/expert-{i}-{domain}.safetensors
    phase 3  MixtureOfExperts, only the routers train   -> router-top{k}.safetensors
    (+)      a dense baseline on as many tokens         -> dense/{shared,ffn}.safetensors
    (+)      evaluation: perplexity matrix, comparison  -> manifest.json

Why a pipeline object and not a notebook cell: the point of the design is that each
expert is trained alone, on a machine that may disappear. So every unit of work
writes its result atomically, records it (file, SHA-256, trunk fingerprint, timing,
peak memory) in `manifest.json`, and a rerun verifies what is on disk before it
skips anything: a file that no longer loads is retrained, and said so in the log.
A stopped expert run resumes from its training-state checkpoint bit-identically.

Memory (`modularforge.pipeline_memory`): for each expert run the pipeline measures
one training step of the trunk + a fresh expert, and counts the bytes of every tensor
alive in the process before the real run starts and after its expert is saved and
dropped. The live counts see anything the process still holds, so the flatness check
built on them fails when finished experts are kept (the tests show it failing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    CheckpointError,
    load_expert,
    load_shared,
    save_expert,
    save_shared,
    shared_fingerprint,
)
from .config import ModelConfig
from .data import list_domains, load_domain, load_mixed
from .manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    ManifestError,
    read_manifest,
    write_manifest,
)
from .pipeline_files import (
    dense_paths,
    expert_path,
    phase1_ffn_path,
    prepare_out_dir,
    remove_states,
    router_path,
    sha256_file,
    shared_path,
    state_names,
    state_path,
)
from .pipeline_memory import (
    live_tensor_bytes,
    measure_expert_step,
    memory_flatness,
    memory_table,
    plot_memory_flatness,
)
from .preflight import check_pipeline_settings, preflight
from .run_lock import locked_folder
from .shared import SharedComponents
from .train import TrainingHistory, TrainSettings, fit, resolve_device, train_expert, train_phase1
from .trainer_model import ModuleTrainerModel

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
    lr: float = 1e-2  # peak learning rate of phases 1 and 2 (and the dense baseline)
    router_lr: float = 1e-2  # peak learning rate of the routers
    aux_loss_weight: float = 0.01  # Switch-style load-balancing loss on the routers (0: off)
    checkpoint_every: int = 50  # training-state checkpoint interval (0: none)
    dense_baseline: bool = True  # also train a dense model on as many tokens as the system
    eval_max_batches: int | None = None  # validation batches per domain (None: all of it)
    seed: int = 0
    device: str | None = None  # None: CUDA when present, else CPU
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        check_pipeline_settings(self)  # every field, by name (modularforge.preflight)

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
        """Phase 1 + every expert + one router: the modular system's token budget, in steps."""
        return self.steps + n_experts * self.expert_steps + self.router_steps

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
        from .evaluate import PerplexityMatrix

        return PerplexityMatrix.from_dict(self.manifest["phases"]["evaluation"]["matrix"])

    @property
    def comparison(self):
        from .evaluate import ComparisonRow, ComparisonTable

        data = self.manifest["phases"]["evaluation"]["comparison"]
        return ComparisonTable(
            rows=[ComparisonRow(**row) for row in data["rows"]],
            system_tokens=data["system_tokens"],
        )


# --------------------------------------------------------------------------- paths and files


def _history(history: TrainingHistory) -> dict[str, Any]:
    values = history.as_dict()
    values.pop("tokens_per_second", None)  # timings vary run to run; `seconds` is enough
    return values


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
    preflight(settings)  # every setting, the device and the step's memory, before any write
    domains = list(domains) if domains is not None else list_domains()
    out = prepare_out_dir(out_dir, domains)
    with locked_folder(out):  # one run per folder, for the run's whole lifetime
        return _run_locked(out, settings, log, domains, on_expert_trained)


def _run_locked(out, settings, log, domains, on_expert_trained) -> PipelineResult:
    config = settings.config
    manifest = read_manifest(out)
    if manifest:
        _check_same_settings(out, manifest, settings, domains)
    else:
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "phases": {}}
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
        write_manifest(out, manifest)

    mixed = load_mixed(config.vocab_size)

    # ---- phase 1: the shared trunk
    shared = _verified_shared(out, phases.get("shared"), note)
    if shared is None:
        # States of experts trained against an older trunk are useless; delete them by
        # name (never a glob's findings: only what this pipeline writes).
        remove_states(out, state_names(len(domains)))
        t0 = time.perf_counter()
        scaffold, history = train_phase1(
            config,
            settings.train_settings(settings.steps),
            mixed,
            checkpoint_path=state_path(out, "shared") if settings.checkpoint_every else None,
            checkpoint_every=settings.checkpoint_every,
        )
        scaffold = scaffold.cpu()
        shared = scaffold.shared.freeze()
        path = save_shared(shared, shared_path(out))
        ffn_path = save_expert(scaffold, phase1_ffn_path(out))
        del scaffold  # the phase-1 FFNs live on in their file, for the phase-1 baseline
        state_path(out, "shared").unlink(missing_ok=True)
        phases["shared"] = {
            "status": "done",
            "file": str(path.relative_to(out)),
            "sha256": sha256_file(path),
            "phase1_ffn": {"file": str(ffn_path.relative_to(out)), "sha256": sha256_file(ffn_path)},
            "fingerprint": shared_fingerprint(shared),
            "seconds": time.perf_counter() - t0,
            "steps": settings.steps,
            "tokens": settings.steps * settings.tokens_per_step,
            "history": _history(history),
        }
        note("trained shared", f"phase 1: trained the shared trunk -> {path}")
        save()
    device = resolve_device(settings.device)
    shared.to(device)

    # ---- phase 2: experts, one at a time
    experts_entry = phases.setdefault("experts", {})
    for index, domain in enumerate(domains):
        path = expert_path(out, index, domain)
        entry = experts_entry.get(domain)
        if _verified_expert(path, entry, shared, index, domain, note):
            continue
        data = load_domain(domain, config.vocab_size)
        train = settings.train_settings(settings.expert_steps)
        memory = measure_expert_step(shared, data, train, index)
        memory["live_before_bytes"] = live_tensor_bytes()
        t0 = time.perf_counter()
        model, history = train_expert(
            shared,
            data,
            train,
            expert_idx=index,
            checkpoint_path=state_path(out, f"expert-{index}")
            if settings.checkpoint_every
            else None,
            checkpoint_every=settings.checkpoint_every,
        )
        seconds = time.perf_counter() - t0
        save_expert(model, path)
        if on_expert_trained is not None:
            on_expert_trained(model)
        del model  # the point of the design: expert i+1 never holds expert i
        memory["live_after_bytes"] = live_tensor_bytes()
        state_path(out, f"expert-{index}").unlink(missing_ok=True)
        experts_entry[domain] = {
            "status": "done",
            "index": index,
            "file": str(path.relative_to(out)),
            "sha256": sha256_file(path),
            "shared_fingerprint": phases["shared"]["fingerprint"],
            "experts_trained_before": index,
            "seconds": seconds,
            "steps": settings.expert_steps,
            "tokens": settings.expert_steps * settings.tokens_per_step,
            "memory": memory,
            "history": _history(history),
        }
        note(
            f"trained expert {index}",
            f"phase 2: trained expert {index} ({domain}), peak step memory "
            f"{memory['peak_bytes'] / 1e6:.1f} MB, tensors alive before/after "
            f"{memory['live_before_bytes'] / 1e6:.1f}/{memory['live_after_bytes'] / 1e6:.1f} MB"
            f" -> {path}",
        )
        save()
    expert_files = [expert_path(out, i, d) for i, d in enumerate(domains)]
    expert_hashes = [experts_entry[d]["sha256"] for d in domains]

    # ---- phase 3: routers
    routers_entry = phases.setdefault("routers", {})
    for k in settings.top_k:
        _router_phase(
            out, k, settings, shared, expert_files, expert_hashes, mixed, routers_entry, note
        )
        save()

    # ---- baseline: a dense model trained on the system's whole token budget
    if settings.dense_baseline:
        _dense_phase(out, settings, len(domains), mixed, phases, note)
        save()

    # ---- evaluation
    _evaluation_phase(out, settings, domains, mixed, phases, note)
    log(result.matrix.to_text())
    manifest["seconds_this_run"] = time.perf_counter() - started
    save()
    return result


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


def _verified_shared(out: Path, entry: dict[str, Any] | None, note) -> SharedComponents | None:
    path = shared_path(out)
    if not entry or entry.get("status") != "done" or not path.exists():
        return None
    try:
        shared = load_shared(path)
    except (CheckpointError, OSError) as error:
        note("retrain shared", f"phase 1: {path} does not load ({error}); retraining")
        return None
    if shared_fingerprint(shared) != entry["fingerprint"]:
        note("retrain shared", f"phase 1: {path} changed since it was recorded; retraining")
        return None
    ffn = phase1_ffn_path(out)
    recorded = entry.get("phase1_ffn") or {}
    if not ffn.exists() or recorded.get("sha256") != sha256_file(ffn):
        note("retrain shared", f"phase 1: {ffn} is missing or changed; retraining phase 1")
        return None
    note(
        "skipped shared",
        f"phase 1: {path} verified (fingerprint {entry['fingerprint'][:12]}), skipping",
    )
    return shared


def _verified_expert(path: Path, entry, shared, index: int, domain: str, note) -> bool:
    if not path.exists():
        if entry:
            note(
                f"retrain expert {index}", f"phase 2: {path} is missing; retraining expert {index}"
            )
        return False
    try:
        loaded = load_expert(path, shared)
    except (CheckpointError, OSError) as error:
        note(f"retrain expert {index}", f"phase 2: {path} does not verify ({error}); retraining")
        return False
    if loaded.expert_idx != index or not entry or entry.get("sha256") != sha256_file(path):
        note(f"retrain expert {index}", f"phase 2: {path} is not the recorded expert; retraining")
        return False
    note(f"skipped expert {index}", f"phase 2: expert {index} ({domain}) verified, skipping")
    return True


def load_pipeline_shared(out_dir: str | Path) -> SharedComponents:
    """The frozen trunk of a finished pipeline directory."""
    return load_shared(shared_path(Path(out_dir)))


def load_pipeline_experts(
    out_dir: str | Path, shared: SharedComponents | None = None
) -> dict[str, ModuleTrainerModel]:
    """Trunk + each expert, by domain (every expert checked against the trunk's fingerprint)."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    shared = shared if shared is not None else load_pipeline_shared(out)
    return {
        domain: load_expert(expert_path(out, i, domain), shared)
        for i, domain in enumerate(manifest["domains"])
    }


def load_pipeline_mixture(out_dir: str | Path, top_k: int, shared: SharedComponents | None = None):
    """The assembled mixture with its trained routers."""
    from .moe import MixtureOfExperts, load_router

    out = Path(out_dir)
    experts = list(load_pipeline_experts(out, shared).values())
    moe = MixtureOfExperts.from_trainer_models(experts, top_k=top_k)
    return load_router(moe, router_path(out, top_k))


def load_pipeline_dense(out_dir: str | Path) -> ModuleTrainerModel:
    """The dense baseline: its own (unfrozen-trained) trunk plus its FFNs."""
    out = Path(out_dir)
    shared_file, ffn_file = dense_paths(out)
    return load_expert(ffn_file, load_shared(shared_file))


def _router_phase(
    out, k, settings, shared, expert_files, expert_hashes, mixed, entries, note
) -> None:
    from .moe import MixtureOfExperts, load_router, save_router, train_router

    path = router_path(out, k)
    entry = entries.get(str(k))
    experts = [load_expert(p, shared) for p in expert_files]
    if entry and path.exists() and entry.get("expert_sha256") == expert_hashes:
        try:
            load_router(MixtureOfExperts.from_trainer_models(experts, top_k=k), path)
            if entry.get("sha256") == sha256_file(path):
                note(f"skipped router top{k}", f"phase 3: router top-{k} verified, skipping")
                return
        except (CheckpointError, ValueError, OSError) as error:
            note(f"retrain router top{k}", f"phase 3: {path} does not verify ({error}); retraining")
    elif entry:
        note(
            f"retrain router top{k}",
            f"phase 3: experts changed or {path} is missing; retraining router top-{k}",
        )
    state = state_path(out, f"router-top{k}")
    if entry is None or entry.get("expert_sha256") != expert_hashes:
        state.unlink(missing_ok=True)  # a half-trained router of other experts is no start
    torch.manual_seed(settings.seed + 7000 + k)  # router initialisation
    moe = MixtureOfExperts.from_trainer_models(
        experts, top_k=k, aux_loss_weight=settings.aux_loss_weight
    )
    moe.to(resolve_device(settings.device))
    t0 = time.perf_counter()
    history = train_router(
        moe,
        mixed,
        settings.train_settings(settings.router_steps, lr=settings.router_lr),
        checkpoint_path=state if settings.checkpoint_every else None,
        checkpoint_every=settings.checkpoint_every,
    )
    save_router(moe, path)
    state.unlink(missing_ok=True)
    entries[str(k)] = {
        "status": "done",
        "file": str(path.relative_to(out)),
        "sha256": sha256_file(path),
        "expert_sha256": list(expert_hashes),
        "top_k": k,
        "aux_loss_weight": settings.aux_loss_weight,
        "seconds": time.perf_counter() - t0,
        "steps": settings.router_steps,
        "tokens": settings.router_steps * settings.tokens_per_step,
        "trainable_parameters": sum(p.numel() for p in moe.router_parameters()),
        "history": _history(history),
    }
    note(f"trained router top{k}", f"phase 3: trained the top-{k} router -> {path}")


def _dense_phase(out, settings, n_experts, mixed, phases, note) -> None:
    shared_file, ffn_file = dense_paths(out)
    entry = phases.get("dense")
    if entry and shared_file.exists() and ffn_file.exists():
        try:
            load_pipeline_dense(out)
            if entry.get("sha256") == [sha256_file(shared_file), sha256_file(ffn_file)]:
                note("skipped dense", "baseline: dense model verified, skipping")
                return
        except (CheckpointError, OSError) as error:
            note("retrain dense", f"baseline: dense files do not verify ({error}); retraining")
    config = settings.config
    steps = settings.dense_steps(n_experts)
    torch.manual_seed(settings.seed + 9000)
    dense_shared = SharedComponents(config)
    dense = ModuleTrainerModel(dense_shared, config, warn_if_unfrozen=False)
    dense.to(resolve_device(settings.device))
    t0 = time.perf_counter()
    history = fit(
        dense,
        mixed,
        settings.train_settings(steps),
        description="baseline: dense model",
        checkpoint_path=state_path(out, "dense") if settings.checkpoint_every else None,
        checkpoint_every=settings.checkpoint_every,
    )
    save_shared(dense_shared, shared_file)
    save_expert(dense, ffn_file)
    state_path(out, "dense").unlink(missing_ok=True)
    phases["dense"] = {
        "status": "done",
        "files": [str(shared_file.relative_to(out)), str(ffn_file.relative_to(out))],
        "sha256": [sha256_file(shared_file), sha256_file(ffn_file)],
        "seconds": time.perf_counter() - t0,
        "steps": steps,
        "tokens": steps * settings.tokens_per_step,
        "history": _history(history),
    }
    note("trained dense", f"baseline: trained a dense model for {steps} steps")


#: Row names of the comparison that are not one model file each.
PHASE1_ROW = "phase 1 (trunk + its FFNs)"
UNIFORM_ROW = "uniform average of experts"
ORACLE_ROW = "oracle: own expert per domain"


def load_pipeline_phase1(out_dir: str | Path, shared: SharedComponents | None = None):
    """The phase-1 model: the trunk with the temporary FFNs it was trained with."""
    out = Path(out_dir)
    shared = shared if shared is not None else load_pipeline_shared(out)
    return load_expert(phase1_ffn_path(out), shared)


def evaluation_models(out_dir: str | Path, top_k: Sequence[int] = (1, 2), dense: bool = True):
    """Every model of a finished run by display name, with its training tokens.

    Rows: the phase-1 model, "expert {i} ({domain})" (trunk + that expert), the
    uniform average of the experts, "MoE top-{k}", "dense". Training tokens count what
    each model's weights saw: trunk (phase 1) + its FFNs; a mixture adds every expert
    and its router; the dense model its own run. The oracle row is not a model (it
    picks the expert by the domain label), so `_evaluation_phase` scores it apart.
    """
    from .moe import uniform_mixture

    out = Path(out_dir)
    manifest = read_manifest(out)
    phases = manifest["phases"]
    shared = load_pipeline_shared(out)
    experts = load_pipeline_experts(out, shared)
    trunk_tokens = phases["shared"]["tokens"]
    models: dict[str, torch.nn.Module] = {PHASE1_ROW: load_pipeline_phase1(out, shared)}
    tokens: dict[str, int] = {PHASE1_ROW: trunk_tokens}
    for i, (domain, model) in enumerate(experts.items()):
        name = f"expert {i} ({domain})"
        models[name] = model
        tokens[name] = trunk_tokens + phases["experts"][domain]["tokens"]
    all_experts = trunk_tokens + sum(phases["experts"][d]["tokens"] for d in experts)
    models[UNIFORM_ROW] = uniform_mixture(list(experts.values()))
    tokens[UNIFORM_ROW] = all_experts
    for k in top_k:
        if str(k) in phases.get("routers", {}):
            name = f"MoE top-{k}"
            models[name] = load_pipeline_mixture(out, k, shared)
            tokens[name] = all_experts + phases["routers"][str(k)]["tokens"]
    if dense and "dense" in phases:
        models["dense"] = load_pipeline_dense(out)
        tokens["dense"] = phases["dense"]["tokens"]
    return models, tokens


def _evaluation_phase(out, settings, domains, mixed, phases, note) -> None:
    from .evaluate import (
        PerplexityMatrix,
        comparison_from_matrix,
        count_parameters,
        perplexity_matrix,
        routed_loss,
    )
    from .moe import routing_fractions

    inputs = {
        name: entry.get("sha256")
        for name, entry in [("shared", phases["shared"]), ("dense", phases.get("dense", {}))]
    }
    inputs["phase1_ffn"] = phases["shared"].get("phase1_ffn", {}).get("sha256")
    inputs["experts"] = [phases["experts"][d]["sha256"] for d in domains]
    inputs["routers"] = {k: v["sha256"] for k, v in phases.get("routers", {}).items()}
    inputs["eval_max_batches"] = settings.eval_max_batches
    inputs["mixed_validation"] = "equal windows per domain"
    if phases.get("evaluation", {}).get("inputs") == inputs:
        note("skipped evaluation", "evaluation: inputs unchanged, skipping")
        return
    t0 = time.perf_counter()
    models, tokens = evaluation_models(out, settings.top_k, settings.dense_baseline)
    device = resolve_device(settings.device)
    for model in models.values():
        model.to(device)
    vals = {d: load_domain(d, settings.config.vocab_size).val for d in domains}
    columns = {**vals, "mixed": mixed}
    batch, seq, limit = settings.batch_size, settings.seq_len, settings.eval_max_batches
    matrix = perplexity_matrix(models, columns, batch, seq, limit)
    # The oracle row: domain d's tokens go to d's expert (its column is the diagonal).
    own = {d: models[f"expert {i} ({d})"] for i, d in enumerate(domains)}
    oracle = [matrix[f"expert {i} ({d})", d] for i, d in enumerate(domains)]
    oracle.append(math.exp(routed_loss(own, mixed, batch, seq, limit)))
    matrix = PerplexityMatrix([*matrix.rows, ORACLE_ROW], matrix.cols, [*matrix.values, oracle])
    tokens[ORACLE_ROW] = tokens[UNIFORM_ROW]
    parameters = {name: count_parameters(model) for name, model in models.items()}
    parameters[ORACLE_ROW] = parameters[UNIFORM_ROW]  # it holds the trunk and every expert
    comparison = comparison_from_matrix(
        matrix, tokens, settings.dense_steps(len(domains)) * settings.tokens_per_step, parameters
    )
    routing = {}
    for k in settings.top_k:
        moe = models.get(f"MoE top-{k}")
        if moe is not None:
            routing[str(k)] = {
                d: routing_fractions(moe, vals[d], batch, seq, limit).tolist() for d in domains
            }
    phases["evaluation"] = {
        "status": "done",
        "inputs": inputs,
        "matrix": matrix.to_dict(),
        "comparison": comparison.to_dict(),
        "routing_fractions": routing,
        "seconds": time.perf_counter() - t0,
    }
    note("evaluated", "evaluation: perplexity of every model (rows) on every domain (cols)")


def summarize_seconds(manifest: dict[str, Any]) -> dict[str, float]:
    """Wall-clock seconds of each phase (as recorded when it ran)."""
    phases = manifest["phases"]
    out = {"phase 1 (shared)": phases["shared"]["seconds"]}
    out["phase 2 (experts)"] = sum(e["seconds"] for e in phases["experts"].values())
    out["phase 3 (routers)"] = sum(e["seconds"] for e in phases.get("routers", {}).values())
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
    "summarize_seconds",
]


# --------------------------------------------------------------------------- command line


def add_pipeline_arguments(parser) -> None:
    """Arguments of `python -m modularforge pipeline` (registered by `modularforge.cli`)."""
    defaults = PipelineSettings()
    parser.add_argument("--preset", choices=["seed", "tiny"], default=defaults.preset)
    parser.add_argument("--out", type=Path, required=True, help="directory for every output")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="phase 1 steps")
    parser.add_argument(
        "--expert-steps", type=int, default=defaults.expert_steps, help="phase 2 steps per expert"
    )
    parser.add_argument(
        "--router-steps", type=int, default=defaults.router_steps, help="phase 3 steps per router"
    )
    parser.add_argument(
        "--top-k",
        type=int,
        nargs="+",
        choices=[1, 2],
        default=list(defaults.top_k),
        help="mixtures to assemble: experts per token (1, 2 or both)",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--aux-loss-weight", type=float, default=defaults.aux_loss_weight)
    parser.add_argument(
        "--checkpoint-every", type=int, default=defaults.checkpoint_every,
        help="training-state checkpoint interval in steps (0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--no-dense", action="store_true", help="skip the dense baseline at equal tokens"
    )
    parser.add_argument(
        "--eval-max-batches", type=int, default=None, help="validation batches per domain"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=_cmd_pipeline)


def _cmd_pipeline(args) -> int:
    settings = PipelineSettings(
        preset=args.preset,
        steps=args.steps,
        expert_steps=args.expert_steps,
        router_steps=args.router_steps,
        top_k=tuple(sorted(set(args.top_k))),
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        aux_loss_weight=args.aux_loss_weight,
        checkpoint_every=args.checkpoint_every,
        dense_baseline=not args.no_dense,
        eval_max_batches=args.eval_max_batches,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    started = time.perf_counter()
    result = run_pipeline(args.out, settings)
    print(result.comparison.to_text())
    print(f"pipeline finished in {time.perf_counter() - started:.1f} s -> {args.out}")
    return 0
