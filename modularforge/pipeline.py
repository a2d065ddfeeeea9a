"""The three phases end to end, resumable: trunk, experts one at a time, routers.

    phase 1  train_shared on the mixed corpus          -> shared.safetensors
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

Memory: before each expert run the pipeline measures one real training step of a
fresh trunk + expert (`measure_training_step`, after a warm-up step) and counts the
bytes of every tensor alive in the process. Neither grows with the number of experts
already trained, because finished experts live on disk, not in memory.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes
from .checkpoint import (
    CheckpointError,
    load_expert,
    load_shared,
    save_expert,
    save_shared,
    shared_fingerprint,
)
from .config import ModelConfig
from .data import DomainData, list_domains, load_domain, load_mixed, random_batch
from .memory import measure_training_step, memory_budget, storage_bytes
from .shared import SharedComponents
from .train import TrainingHistory, TrainSettings, fit, make_optimizer, resolve_device, train_expert
from .train import train_shared as _train_shared
from .trainer_model import ModuleTrainerModel

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "modularforge-pipeline"
MANIFEST_VERSION = 1
#: Settings that may change between a run and its resumption without invalidating it.
_FREE_SETTINGS = {"progress", "device", "top_k"}


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
        for name in ("steps", "expert_steps", "router_steps", "batch_size", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PipelineSettings.{name} must be an int >= 1, got {value!r}")
        if not self.top_k or any(k not in (1, 2) for k in self.top_k):
            raise ValueError(
                f"PipelineSettings.top_k must be a non-empty subset of (1, 2), got {self.top_k}"
            )
        if self.checkpoint_every < 0:
            raise ValueError("PipelineSettings.checkpoint_every must be >= 0")
        ModelConfig.preset(self.preset)  # validates the name

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


def shared_path(out_dir: Path) -> Path:
    return Path(out_dir) / "shared.safetensors"


def expert_path(out_dir: Path, index: int, domain: str) -> Path:
    return Path(out_dir) / "experts" / f"expert-{index}-{domain}.safetensors"


def router_path(out_dir: Path, top_k: int) -> Path:
    return Path(out_dir) / f"router-top{top_k}.safetensors"


def state_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / "state" / f"{name}.state.safetensors"


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes: what the manifest records to notice any change."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of a pipeline directory ({} when there is none yet)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        return {}
    manifest = json.loads(path.read_text("utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a modularforge pipeline manifest")
    return manifest


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Atomic: a crash leaves the previous manifest, never half of one."""
    data = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default) + "\n"
    return atomic_write_bytes(Path(out_dir) / MANIFEST_NAME, data.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in the manifest")


def _history(history: TrainingHistory) -> dict[str, Any]:
    values = history.as_dict()
    values.pop("tokens_per_second", None)  # timings vary run to run; `seconds` is enough
    return values


# --------------------------------------------------------------------------- memory


def live_tensor_bytes() -> int:
    """Bytes of the distinct storages of every tensor the Python process can reach.

    A coarse but honest check on "finished experts are not kept": if the pipeline
    held experts 0..i-1 while training expert i, this number would grow with i.
    """
    gc.collect()
    tensors = [obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor)]
    return storage_bytes(t for t in tensors if t.device.type != "meta")


def measure_expert_run(
    shared: SharedComponents, data: DomainData, settings: PipelineSettings, expert_idx: int
) -> dict[str, int]:
    """Peak memory of one training step of trunk + a fresh expert, with this run's batch.

    Measured on a probe (a fresh expert with the same shape, batch and optimizer),
    after one warm-up step, so the real run's weights, RNG and data position are
    untouched (bit-identical resume keeps working). The probe is freed afterwards.
    """
    device = resolve_device(settings.device)
    train = settings.train_settings(settings.expert_steps)
    probe = ModuleTrainerModel(shared, shared.config, expert_idx=expert_idx).to(device)
    optimizer = make_optimizer(probe.parameters(), train)
    generator = torch.Generator().manual_seed(settings.seed)
    batch = random_batch(data.train, settings.batch_size, settings.seq_len, generator)
    measure_training_step(probe, batch, optimizer)  # warm-up: BLAS workspace, AdamW state
    step = measure_training_step(probe, batch, optimizer)
    live = live_tensor_bytes()
    del probe, optimizer
    static = memory_budget(shared.config, settings.batch_size, settings.seq_len, frozen=True)
    return {
        "peak_bytes": int(step.peak),
        "static_bytes": int(step.static),
        "activation_bytes": int(step.activations),
        "analytic_static_bytes": int(static.static),
        "live_tensor_bytes": int(live),
        "expert_param_bytes": int(step.params_trainable),
    }


# --------------------------------------------------------------------------- the run


def run_pipeline(
    out_dir: str | Path,
    settings: PipelineSettings = PipelineSettings(),
    log: Callable[[str], None] = print,
    domains: Sequence[str] | None = None,
) -> PipelineResult:
    """Run (or resume) every phase into `out_dir`; see the module docstring."""
    out = Path(out_dir)
    for sub in ("", "experts", "state", "dense"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    config = settings.config
    domains = list(domains) if domains is not None else list_domains()
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
        for stale in (out / "state").glob("*.safetensors"):
            stale.unlink()  # states of experts trained against an older trunk are useless
        t0 = time.perf_counter()
        shared, history = _train_shared(
            config,
            settings.train_settings(settings.steps),
            mixed,
            checkpoint_path=state_path(out, "shared") if settings.checkpoint_every else None,
            checkpoint_every=settings.checkpoint_every,
        )
        shared = shared.cpu()
        path = save_shared(shared, shared_path(out))
        state_path(out, "shared").unlink(missing_ok=True)
        phases["shared"] = {
            "status": "done",
            "file": str(path.relative_to(out)),
            "sha256": sha256_file(path),
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
        memory = measure_expert_run(shared, data, settings, index)
        t0 = time.perf_counter()
        model, history = train_expert(
            shared,
            data,
            settings.train_settings(settings.expert_steps),
            expert_idx=index,
            checkpoint_path=state_path(out, f"expert-{index}")
            if settings.checkpoint_every
            else None,
            checkpoint_every=settings.checkpoint_every,
        )
        save_expert(model, path)
        del model  # the point of the design: expert i+1 never holds expert i
        state_path(out, f"expert-{index}").unlink(missing_ok=True)
        experts_entry[domain] = {
            "status": "done",
            "index": index,
            "file": str(path.relative_to(out)),
            "sha256": sha256_file(path),
            "shared_fingerprint": phases["shared"]["fingerprint"],
            "experts_trained_before": index,
            "seconds": time.perf_counter() - t0,
            "steps": settings.expert_steps,
            "tokens": settings.expert_steps * settings.tokens_per_step,
            "memory": memory,
            "history": _history(history),
        }
        note(
            f"trained expert {index}",
            f"phase 2: trained expert {index} ({domain}), peak step memory "
            f"{memory['peak_bytes'] / 1e6:.1f} MB -> {path}",
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
    return load_expert(
        out / "dense" / "ffn.safetensors", load_shared(out / "dense" / "shared.safetensors")
    )


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
    shared_file, ffn_file = out / "dense" / "shared.safetensors", out / "dense" / "ffn.safetensors"
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


def evaluation_models(out_dir: str | Path, top_k: Sequence[int] = (1, 2), dense: bool = True):
    """Every model of a finished run by display name, with its training tokens.

    Rows: "expert {i} ({domain})" (trunk + that expert), "MoE top-{k}", "dense".
    Training tokens count what each model's weights saw: trunk (phase 1) + its
    FFNs; a mixture adds every expert and its router; the dense model its own run.
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    phases = manifest["phases"]
    shared = load_pipeline_shared(out)
    experts = load_pipeline_experts(out, shared)
    trunk_tokens = phases["shared"]["tokens"]
    models: dict[str, torch.nn.Module] = {}
    tokens: dict[str, int] = {}
    for i, (domain, model) in enumerate(experts.items()):
        name = f"expert {i} ({domain})"
        models[name] = model
        tokens[name] = trunk_tokens + phases["experts"][domain]["tokens"]
    all_experts = trunk_tokens + sum(phases["experts"][d]["tokens"] for d in experts)
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
    from .evaluate import comparison_from_matrix, perplexity_matrix
    from .moe import routing_fractions

    inputs = {
        name: entry.get("sha256")
        for name, entry in [("shared", phases["shared"]), ("dense", phases.get("dense", {}))]
    }
    inputs["experts"] = [phases["experts"][d]["sha256"] for d in domains]
    inputs["routers"] = {k: v["sha256"] for k, v in phases.get("routers", {}).items()}
    inputs["eval_max_batches"] = settings.eval_max_batches
    if phases.get("evaluation", {}).get("inputs") == inputs:
        note("skipped evaluation", "evaluation: inputs unchanged, skipping")
    else:
        t0 = time.perf_counter()
        models, tokens = evaluation_models(out, settings.top_k, settings.dense_baseline)
        device = resolve_device(settings.device)
        for model in models.values():
            model.to(device)
        vals = {d: load_domain(d, settings.config.vocab_size).val for d in domains}
        columns = {**vals, "mixed": mixed.val}
        batch, seq, limit = settings.batch_size, settings.seq_len, settings.eval_max_batches
        matrix = perplexity_matrix(models, columns, batch, seq, limit)
        comparison = comparison_from_matrix(
            matrix, tokens, settings.dense_steps(len(domains)) * settings.tokens_per_step
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


def memory_table(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per expert run: how many experts existed before it, and its memory figures."""
    rows = []
    for domain in manifest["domains"]:
        entry = manifest["phases"]["experts"][domain]
        rows.append({"domain": domain, "experts_trained_before": entry["experts_trained_before"],
                     **entry["memory"]})  # fmt: skip
    return sorted(rows, key=lambda row: row["experts_trained_before"])


def plot_memory_flatness(manifest: dict[str, Any], ax=None):
    """Peak step memory of each expert run vs experts already trained, against the floor.

    Three lines: the measured peak of each run, the analytic static floor (trunk +
    one expert + its gradients + AdamW state), and what the static memory would be
    if the finished experts were kept in memory (one expert's weights more per run).
    """
    import matplotlib.pyplot as plt

    rows = memory_table(manifest)
    x = [row["experts_trained_before"] for row in rows]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8))
    mb = 1e6
    peak = [row["peak_bytes"] / mb for row in rows]
    floor = [row["analytic_static_bytes"] / mb for row in rows]
    kept = [
        (row["analytic_static_bytes"] + n * row["expert_param_bytes"]) / mb
        for n, row in zip(x, rows, strict=True)
    ]
    ax.plot(x, peak, "o-", label="measured peak of one training step")
    ax.plot(x, [row["live_tensor_bytes"] / mb for row in rows], "s--",
            label="all tensors alive in the process")  # fmt: skip
    ax.plot(x, floor, ":", color="black", label="static floor (params + grads + AdamW)")
    ax.plot(x, kept, "-.", color="grey", label="static, if finished experts were kept")
    for xi, row in zip(x, rows, strict=True):
        ax.annotate(row["domain"], (xi, row["peak_bytes"] / mb), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)  # fmt: skip
    ax.set_xticks(x)
    ax.set_xlabel("experts already trained before this run")
    ax.set_ylabel("memory (MB, 10^6 bytes)")
    ax.set_ylim(0, max(max(peak), max(kept)) * 1.25)
    ax.set_title("Training expert i never holds experts 0..i-1")
    ax.legend(fontsize=8, loc="lower right")
    return ax


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
    "PipelineResult",
    "PipelineSettings",
    "evaluation_models",
    "expert_path",
    "live_tensor_bytes",
    "load_pipeline_dense",
    "load_pipeline_experts",
    "load_pipeline_mixture",
    "load_pipeline_shared",
    "measure_expert_run",
    "memory_table",
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
