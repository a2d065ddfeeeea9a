"""Load the models of a finished pipeline folder, each checked against the manifest's hash.

The manifest records the SHA-256 of every file the run wrote. The pipeline itself
compares them before skipping work; loading for use (evaluation, generation, the
chapters) used to trust whatever files lay in the folder, so an expert replaced by
another, or a router file swapped for one of another run, loaded silently. Every
loader here hashes the file it is about to load and refuses one the manifest does
not record (`CheckpointError`, naming the file, both hashes and the fix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modularforge.files.checkpoint import CheckpointError, load_expert, load_shared
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.pipeline.folders import (
    dense_paths,
    expert_path,
    phase1_ffn_path,
    router_path,
    sha256_file,
    shared_path,
)
from modularforge.pipeline.manifest import MANIFEST_NAME, ManifestError, read_manifest


def pipeline_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The folder's validated manifest; refuses a folder that has none."""
    manifest = read_manifest(out_dir)
    if not manifest:
        raise ManifestError(
            f"{Path(out_dir) / MANIFEST_NAME} does not exist: {out_dir} is not a finished "
            "pipeline folder (run `python -m modularforge pipeline --out` into it first)"
        )
    return manifest


def recorded_file(path: Path, recorded: Any, what: str) -> Path:
    """`path` if its SHA-256 is the one the manifest recorded for it; else `CheckpointError`."""
    if not isinstance(recorded, str):
        raise CheckpointError(
            f"{path}: the manifest records no hash for the {what}; the run did not finish it "
            "(rerun the pipeline into this folder to complete it)"
        )
    actual = sha256_file(path)
    if actual != recorded:
        raise CheckpointError(
            f"{path} is not the {what} the manifest recorded (sha256 {actual[:12]}... where "
            f"{recorded[:12]}... was written): the folder changed after the run; rerun the "
            "pipeline into it to retrain what changed"
        )
    return path


def _entry(manifest: dict[str, Any], *keys: str) -> Any:
    value: Any = manifest.get("phases", {})
    for key in keys:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return value


def load_pipeline_shared(out_dir: str | Path) -> SharedComponents:
    """The frozen trunk of a finished pipeline folder."""
    out = Path(out_dir)
    recorded = _entry(pipeline_manifest(out), "shared", "sha256")
    return load_shared(recorded_file(shared_path(out), recorded or None, "shared trunk"))


def load_pipeline_experts(
    out_dir: str | Path, shared: SharedComponents | None = None
) -> dict[str, ModuleTrainerModel]:
    """Trunk + each expert, by domain (each file the recorded one, each fitting the trunk)."""
    out = Path(out_dir)
    manifest = pipeline_manifest(out)
    shared = shared if shared is not None else load_pipeline_shared(out)
    experts = {}
    for i, domain in enumerate(manifest.get("domains", [])):
        recorded = _entry(manifest, "experts", domain, "sha256") or None
        path = recorded_file(expert_path(out, i, domain), recorded, f"expert {i} ({domain})")
        experts[domain] = load_expert(path, shared)
    return experts


def load_pipeline_mixture(out_dir: str | Path, top_k: int, shared: SharedComponents | None = None):
    """The assembled mixture with its trained router (trained with exactly these experts)."""
    from modularforge.mixture.moe import MixtureOfExperts, load_router

    out = Path(out_dir)
    manifest = pipeline_manifest(out)
    entry = _entry(manifest, "routers", str(top_k))
    experts_now = [_entry(manifest, "experts", d, "sha256") for d in manifest.get("domains", [])]
    if entry and entry.get("expert_sha256") != experts_now:
        raise CheckpointError(
            f"{router_path(out, top_k)} was trained with other experts than the manifest now "
            "records; rerun the pipeline into this folder to retrain the router"
        )
    experts = list(load_pipeline_experts(out, shared).values())
    moe = MixtureOfExperts.from_trainer_models(experts, top_k=top_k)
    path = recorded_file(router_path(out, top_k), entry.get("sha256"), f"top-{top_k} router")
    return load_router(moe, path)


def load_pipeline_dense(out_dir: str | Path) -> ModuleTrainerModel:
    """The dense baseline: its own (unfrozen-trained) trunk plus its FFNs."""
    out = Path(out_dir)
    recorded = _entry(pipeline_manifest(out), "dense", "sha256") or [None, None]
    shared_file, ffn_file = dense_paths(out)
    shared = load_shared(recorded_file(shared_file, recorded[0], "dense baseline's trunk"))
    return load_expert(recorded_file(ffn_file, recorded[-1], "dense baseline's FFNs"), shared)


def load_pipeline_phase1(out_dir: str | Path, shared: SharedComponents | None = None):
    """The phase-1 model: the trunk with the temporary FFNs it was trained with."""
    out = Path(out_dir)
    recorded = _entry(pipeline_manifest(out), "shared", "phase1_ffn", "sha256") or None
    shared = shared if shared is not None else load_pipeline_shared(out)
    return load_expert(recorded_file(phase1_ffn_path(out), recorded, "phase-1 FFNs"), shared)
