"""The pipeline's mixing stage (Branch-Train-MiX): the assembled mixture fine-tuned on mixed data.

After phase 3 the top-k mixture (`min(settings.top_k)`) holds experts trained apart
and a router trained alone. BTX ends with a short fine-tune of the whole mixture on
all the data, so that the shared weights adapt to a residual stream now written by
several experts. Here `mixing_steps` steps train the router together with the
weights `mixing_trainable` names (`mixing.TRAINABLE`); the experts stay frozen, as
BTX found freezing them changed little.

The stage gives up the frozen-trunk saving: attention and norms get gradients and
AdamW state again. Its peak step memory is measured before it trains, with the probe
phase 2 uses, and stored in the manifest beside the experts'.

Files: `mixed/shared.safetensors` (the trunk after mixing: it changed, so it is a
trunk of its own with its own fingerprint) and `mixed/router-top{k}.safetensors`
(the router, recorded against that trunk). The experts are the phase-2 files,
unchanged, so `load_pipeline_mixed` loads them against the phase-1 trunk, then moves
the mixed trunk's weights in; every file is checked against the manifest's hash.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from modularforge.files.checkpoint import (
    CheckpointError,
    load_shared,
    save_shared,
    shared_fingerprint,
)
from modularforge.files.output_paths import save_or_rescue
from modularforge.pipeline.folders import mixing_paths, sha256_file, state_path
from modularforge.pipeline.load import (
    _entry,
    load_pipeline_mixture,
    pipeline_manifest,
    recorded_file,
)
from modularforge.pipeline.phases import history_record, train_resumably
from modularforge.training.train import resolve_device


def mixing_top_k(settings: Any) -> int:
    """The mixture the mixing stage starts from: the sparsest one the run assembles."""
    return min(settings.top_k)


def mixing_inputs(settings: Any, phases: dict[str, Any]) -> dict[str, Any]:
    """What the mixing stage depends on: a change in any of them retrains it."""
    k = mixing_top_k(settings)
    return {
        "router_sha256": phases.get("routers", {}).get(str(k), {}).get("sha256"),
        "trainable": settings.mixing_trainable,
        "steps": settings.mixing_steps,
        "lr": settings.mixing_lr,
    }


def load_pipeline_mixed(out_dir: str | Path):
    """The mixture after the mixing stage: phase-2 experts, mixed trunk, mixed router."""
    from modularforge.mixture.moe import load_router

    out = Path(out_dir)
    manifest = pipeline_manifest(out)
    entry = _entry(manifest, "mixing")
    if not entry:
        raise CheckpointError(
            f"{out} has no mixing stage in its manifest; run the pipeline with --mixing-steps > 0"
        )
    shared_file, router_file = mixing_paths(out, entry["top_k"])
    recorded = entry.get("sha256") or [None, None]
    moe = load_pipeline_mixture(out, entry["top_k"])  # the phase-1 trunk, its own object
    mixed = load_shared(recorded_file(shared_file, recorded[0], "trunk after mixing"))
    if mixed.config != moe.config:
        raise CheckpointError(
            f"{shared_file} holds a trunk of another shape than the run's; rerun the pipeline"
        )
    with torch.no_grad():
        moe.shared.load_state_dict(mixed.state_dict())
    return load_router(moe, recorded_file(router_file, recorded[-1], "router after mixing"))


def _verified(out: Path, entry: dict[str, Any] | None, inputs: dict[str, Any], note) -> bool:
    if not entry or entry.get("inputs") != inputs:
        if entry:
            note("retrain mixing", "mixing: its router or settings changed; retraining the stage")
        return False
    try:
        load_pipeline_mixed(out)
    except (CheckpointError, ValueError, OSError) as error:
        note("retrain mixing", f"mixing: the stage's files do not verify ({error}); retraining")
        return False
    note("skipped mixing", "mixing: verified, skipping")
    return True


def mixing_phase(out, settings, mixed, phases, note, ready) -> None:
    """Train (or verify) the mixing stage; record files, hashes, tokens and peak memory."""
    from modularforge.mixture.mixing import measure_mixing_step, train_mixing
    from modularforge.mixture.moe import save_router

    if settings.mixing_steps == 0:
        phases.pop("mixing", None)
        return
    inputs = mixing_inputs(settings, phases)
    if _verified(out, phases.get("mixing"), inputs, note):
        return
    ready()
    k = mixing_top_k(settings)
    state = state_path(out, "mixing")
    if phases.get("mixing", {}).get("inputs") != inputs:
        state.unlink(missing_ok=True)  # a half-trained stage of another start is no start
    moe = load_pipeline_mixture(out, k)
    moe.aux_loss_weight = float(settings.aux_loss_weight)
    moe.to(resolve_device(settings.device))
    train = settings.train_settings(settings.mixing_steps, lr=settings.mixing_lr)
    memory = measure_mixing_step(moe, mixed, train, settings.mixing_trainable)
    t0 = time.perf_counter()
    history = train_resumably(
        out,
        "mixing",
        settings,
        partial(train_mixing, moe, mixed, train, settings.mixing_trainable),
        note,
        "mixing",
    )
    moe = moe.cpu().eval()
    shared_file, router_file = mixing_paths(out, k)
    shared_file.parent.mkdir(exist_ok=True)
    save_or_rescue(partial(save_shared, moe.shared), shared_file, "trunk after mixing", state)
    save_or_rescue(partial(save_router, moe), router_file, "router after mixing", state)
    state.unlink(missing_ok=True)
    phases["mixing"] = {
        "status": "done",
        "files": [str(p.relative_to(out)) for p in (shared_file, router_file)],
        "sha256": [sha256_file(shared_file), sha256_file(router_file)],
        "fingerprint": shared_fingerprint(moe.shared),
        "inputs": inputs,
        "top_k": k,
        "trainable": settings.mixing_trainable,
        "trainable_parameters": memory["trainable_params"],
        "seconds": time.perf_counter() - t0,
        "steps": settings.mixing_steps,
        "tokens": settings.mixing_steps * settings.tokens_per_step,
        "memory": memory,
        "history": history_record(history),
    }
    note(
        "trained mixing",
        f"mixing: trained {settings.mixing_trainable} of the top-{k} mixture for "
        f"{settings.mixing_steps} steps, peak step memory {memory['peak_bytes'] / 1e6:.1f} MB",
    )
