"""Phase 3 (routers) and the dense baseline of a pipeline run: verify what is recorded, or train.

Each function is one unit of work of `run_pipeline`: it checks the file the
manifest records (loads, same hash, same experts) and skips it, or trains it
with a resumable training state, writes it atomically and records it. `ready` is
the run's check that its folders take writes, called before the first step;
`note(event, message)` logs what happened.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import torch

from .checkpoint import CheckpointError, load_expert, save_expert, save_shared
from .output_paths import save_or_rescue
from .pipeline_files import dense_paths, router_path, sha256_file, state_path
from .pipeline_load import load_pipeline_dense
from .shared import SharedComponents
from .state_recovery import train_or_set_aside
from .train import TrainingHistory, fit, resolve_device
from .trainer_model import ModuleTrainerModel


def history_record(history: TrainingHistory) -> dict[str, Any]:
    """A training history as the manifest stores it (without per-step timings)."""
    values = history.as_dict()
    values.pop("tokens_per_second", None)  # timings vary run to run; `seconds` is enough
    return values


def router_phase(
    out, k, settings, shared, expert_files, expert_hashes, mixed, entries, note, ready
) -> None:
    """Phase 3 for one top-k: verify the recorded router, or train it (its state resumable)."""
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
    checkpoint = state if settings.checkpoint_every else None
    history = train_or_set_aside(
        checkpoint,
        lambda: train_router(
            moe,
            mixed,
            settings.train_settings(settings.router_steps, lr=settings.router_lr),
            checkpoint_path=checkpoint,
            checkpoint_every=settings.checkpoint_every,
        ),
        note,
        f"set aside state router-top{k}",
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
    checkpoint = state_path(out, "dense") if settings.checkpoint_every else None
    history = train_or_set_aside(
        checkpoint,
        lambda: fit(
            dense,
            mixed,
            settings.train_settings(steps),
            description="baseline: dense model",
            checkpoint_path=checkpoint,
            checkpoint_every=settings.checkpoint_every,
        ),
        note,
        "set aside state dense",
        "baseline",
    )
    kept = state_path(out, "dense")
    save_or_rescue(partial(save_shared, dense_shared), shared_file, "dense trunk", kept)
    save_or_rescue(partial(save_expert, dense), ffn_file, "dense FFNs", kept)
    state_path(out, "dense").unlink(missing_ok=True)
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
