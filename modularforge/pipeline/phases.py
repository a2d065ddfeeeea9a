"""The units of work of a pipeline run: trunk, each expert, each router, the dense baseline.

Each function is one unit of work of `run_pipeline`: it checks the file the
manifest records (loads, same hash, same trunk or experts) and skips it, or trains
it with a resumable training state (set aside if it no longer loads), writes it
atomically (or says where the result went) and records it in `phases`, the
manifest's dict, which the caller then saves. `ready` is the run's check that its
folders take writes, called before the first step; `note(event, message)` logs
what happened. A new stage (another kind of expert, a mixing step) is one more
function of this shape.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from modularforge.files.checkpoint import (
    CheckpointError,
    load_expert,
    load_shared,
    save_expert,
    save_shared,
    shared_fingerprint,
)
from modularforge.files.output_paths import save_or_rescue
from modularforge.files.state_recovery import train_or_set_aside
from modularforge.mixture.branching import branch_expert
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.pipeline.folders import (
    dense_paths,
    expert_path,
    phase1_ffn_path,
    remove_states,
    router_path,
    sha256_file,
    shared_path,
    state_path,
    trunk_dependent_states,
)
from modularforge.pipeline.load import load_pipeline_dense, load_pipeline_phase1
from modularforge.pipeline.memory_check import live_tensor_bytes, measure_expert_step
from modularforge.training.data import load_domain
from modularforge.training.train import (
    TrainingHistory,
    fit,
    resolve_device,
    train_expert,
    train_phase1,
)


def history_record(history: TrainingHistory) -> dict[str, Any]:
    """A training history as the manifest stores it (without per-step timings)."""
    values = history.as_dict()
    values.pop("tokens_per_second", None)  # timings vary run to run; `seconds` is enough
    return values


def train_resumably(out: Path, name: str, settings: Any, trainer, note, prefix: str):
    """Run `trainer` with the unit's training state `name` (resumable), as every unit does.

    The state file is `state_path(out, name)`, written every `settings.checkpoint_every`
    steps (none when 0); a state that no longer loads is set aside and the unit trained
    from the start (`train_or_set_aside`). `trainer` takes the two checkpoint keywords.
    """
    checkpoint = state_path(out, name) if settings.checkpoint_every else None
    return train_or_set_aside(
        checkpoint,
        partial(trainer, checkpoint_path=checkpoint, checkpoint_every=settings.checkpoint_every),
        note,
        f"set aside state {name}",
        prefix,
    )


def shared_phase(out, settings, n_experts, mixed, phases, note, ready) -> SharedComponents:
    """Phase 1: the recorded trunk if it verifies, else train it (with temporary FFNs)."""
    shared = verified_shared(out, phases.get("shared"), note)
    if shared is not None:
        return shared
    # States of experts and routers trained against an older trunk are useless; delete
    # them by name (never a glob's findings: only what this pipeline writes). The
    # trunk's own state stays: it is how a stopped phase 1 resumes.
    ready()
    remove_states(out, trunk_dependent_states(n_experts, settings.top_k))
    t0 = time.perf_counter()
    kept = state_path(out, "shared")
    scaffold, history = train_resumably(
        out,
        "shared",
        settings,
        partial(train_phase1, settings.config, settings.train_settings(settings.steps), mixed),
        note,
        "phase 1",
    )
    scaffold = scaffold.cpu()
    shared = scaffold.shared.freeze()
    path = save_or_rescue(partial(save_shared, shared), shared_path(out), "trunk", kept)
    ffn_path = save_or_rescue(
        partial(save_expert, scaffold), phase1_ffn_path(out), "phase-1 FFNs", kept
    )
    del scaffold  # the phase-1 FFNs live on in their file, for the phase-1 baseline
    kept.unlink(missing_ok=True)
    phases["shared"] = {
        "status": "done",
        "file": str(path.relative_to(out)),
        "sha256": sha256_file(path),
        "phase1_ffn": {"file": str(ffn_path.relative_to(out)), "sha256": sha256_file(ffn_path)},
        "fingerprint": shared_fingerprint(shared),
        "seconds": time.perf_counter() - t0,
        "steps": settings.steps,
        "tokens": settings.steps * settings.tokens_per_step,
        "history": history_record(history),
    }
    note("trained shared", f"phase 1: trained the shared trunk -> {path}")
    return shared


def expert_phase(
    out, index, domain, settings, shared, phases, note, ready, on_expert_trained=None
) -> None:
    """Phase 2 for one expert: skip it if the recorded file verifies, else train it alone.

    Its peak step memory is measured first, and the bytes of every live tensor
    before it trains and after it is saved and dropped: the flatness check.
    """
    entries = phases.setdefault("experts", {})
    path = expert_path(out, index, domain)
    if verified_expert(path, entries.get(domain), shared, index, domain, note):
        return
    ready()
    data = load_domain(domain, settings.config.vocab_size)
    train = settings.train_settings(settings.expert_steps, lr=settings.expert_lr)
    memory = measure_expert_step(shared, data, train, index)
    memory["live_before_bytes"] = live_tensor_bytes()  # before the expert's weights exist
    start = None
    if settings.expert_init == "branched":  # BTM/BTX: a copy of the phase-1 FFNs
        start = branch_expert(load_pipeline_phase1(out, shared))
    t0 = time.perf_counter()
    kept = state_path(out, f"expert-{index}")
    model, history = train_resumably(
        out,
        f"expert-{index}",
        settings,
        partial(train_expert, shared, data, train, expert_idx=index, experts=start),
        note,
        "phase 2",
    )
    seconds = time.perf_counter() - t0
    save_or_rescue(partial(save_expert, model), path, f"expert {index}", kept)
    if on_expert_trained is not None:
        on_expert_trained(model)
    del model, start  # the point of the design: expert i+1 never holds expert i
    memory["live_after_bytes"] = live_tensor_bytes()
    kept.unlink(missing_ok=True)
    entries[domain] = {
        "status": "done",
        "index": index,
        "file": str(path.relative_to(out)),
        "sha256": sha256_file(path),
        "shared_fingerprint": phases["shared"]["fingerprint"],
        "experts_trained_before": index,
        "init": settings.expert_init,
        "seconds": seconds,
        "steps": settings.expert_steps,
        "tokens": settings.expert_steps * settings.tokens_per_step,
        "memory": memory,
        "history": history_record(history),
    }
    note(
        f"trained expert {index}",
        f"phase 2: trained expert {index} ({domain}), peak step memory "
        f"{memory['peak_bytes'] / 1e6:.1f} MB, tensors alive before/after "
        f"{memory['live_before_bytes'] / 1e6:.1f}/{memory['live_after_bytes'] / 1e6:.1f} MB"
        f" -> {path}",
    )


def router_phase(
    out, k, settings, shared, expert_files, expert_hashes, mixed, entries, note, ready
) -> None:
    """Phase 3 for one top-k: verify the recorded router, or train it (its state resumable)."""
    from modularforge.mixture.moe import MixtureOfExperts, load_router, save_router, train_router

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
    ready()
    state = state_path(out, f"router-top{k}")
    if entry is None or entry.get("expert_sha256") != expert_hashes:
        state.unlink(missing_ok=True)  # a half-trained router of other experts is no start
    torch.manual_seed(settings.seed + 7000 + k)  # router initialisation
    moe = MixtureOfExperts.from_trainer_models(
        experts, top_k=k, aux_loss_weight=settings.aux_loss_weight
    )
    moe.to(resolve_device(settings.device))
    t0 = time.perf_counter()
    history = train_resumably(
        out,
        f"router-top{k}",
        settings,
        partial(
            train_router,
            moe,
            mixed,
            settings.train_settings(settings.router_steps, lr=settings.router_lr),
        ),
        note,
        "phase 3",
    )
    save_or_rescue(partial(save_router, moe), path, f"top-{k} router", state)
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
        "history": history_record(history),
    }
    note(f"trained router top{k}", f"phase 3: trained the top-{k} router -> {path}")


def dense_phase(out, settings, n_experts, mixed, phases, note, ready) -> None:
    """The dense baseline on the whole system's token budget: verify it, or train it."""
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
    ready()
    config = settings.config
    steps = settings.dense_steps(n_experts)
    torch.manual_seed(settings.seed + 9000)
    dense_shared = SharedComponents(config)
    dense = ModuleTrainerModel(dense_shared, config, warn_if_unfrozen=False)
    dense.to(resolve_device(settings.device))
    t0 = time.perf_counter()
    history = train_resumably(
        out,
        "dense",
        settings,
        partial(
            fit, dense, mixed, settings.train_settings(steps), description="baseline: dense model"
        ),
        note,
        "baseline",
    )
    kept = state_path(out, "dense")
    save_or_rescue(partial(save_shared, dense_shared), shared_file, "dense trunk", kept)
    save_or_rescue(partial(save_expert, dense), ffn_file, "dense FFNs", kept)
    kept.unlink(missing_ok=True)
    phases["dense"] = {
        "status": "done",
        "files": [str(shared_file.relative_to(out)), str(ffn_file.relative_to(out))],
        "sha256": [sha256_file(shared_file), sha256_file(ffn_file)],
        "seconds": time.perf_counter() - t0,
        "steps": steps,
        "tokens": steps * settings.tokens_per_step,
        "history": history_record(history),
    }
    note("trained dense", f"baseline: trained a dense model for {steps} steps")


def verified_shared(out: Path, entry: dict[str, Any] | None, note) -> SharedComponents | None:
    """The recorded trunk if it loads, has its fingerprint and its phase-1 FFNs; else None."""
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


def verified_expert(path: Path, entry, shared, index: int, domain: str, note) -> bool:
    """True if `path` loads against `shared` and is the expert the manifest recorded."""
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
