"""The evaluation of a pipeline run: every model on every domain, and the comparison table.

Rows are models (phase 1, each expert, the uniform average, each mixture, the
dense baseline, and the oracle that routes by the domain label); columns are the
domains' validation sets and the mixed one. The evaluation reruns only when one of
its inputs (a model file's hash, `eval_max_batches`) changed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from modularforge.pipeline.load import (
    load_pipeline_dense,
    load_pipeline_experts,
    load_pipeline_mixture,
    load_pipeline_phase1,
    load_pipeline_shared,
    pipeline_manifest,
)
from modularforge.training.data import load_domain
from modularforge.training.train import resolve_device

#: Row names of the comparison that are not one model file each.
PHASE1_ROW = "phase 1 (trunk + its FFNs)"
UNIFORM_ROW = "uniform average of experts"
ORACLE_ROW = "oracle: own expert per domain"


def mixing_row(top_k: int) -> str:
    """The comparison's row of the mixture after the mixing stage."""
    return f"MoE top-{top_k} + mixing stage"


def evaluation_models(out_dir: str | Path, top_k: Sequence[int] = (1, 2), dense: bool = True):
    """Every model of a finished run by display name, with its training tokens.

    Rows: the phase-1 model, "expert {i} ({domain})" (trunk + that expert), the
    uniform average of the experts, "MoE top-{k}", the mixture after the mixing
    stage (`mixing_row`), "dense". Training tokens count what
    each model's weights saw: trunk (phase 1) + its FFNs; a mixture adds every expert
    and its router, the mixing stage its own steps; the dense model its own run. The oracle row is not a model (it
    picks the expert by the domain label), so `evaluation_phase` scores it apart.
    """
    from modularforge.mixture.moe import uniform_mixture

    out = Path(out_dir)
    manifest = pipeline_manifest(out)
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
    if "mixing" in phases:
        from modularforge.pipeline.mixing import load_pipeline_mixed

        k = phases["mixing"]["top_k"]
        models[mixing_row(k)] = load_pipeline_mixed(out)
        tokens[mixing_row(k)] = tokens[f"MoE top-{k}"] + phases["mixing"]["tokens"]
    if dense and "dense" in phases:
        models["dense"] = load_pipeline_dense(out)
        tokens["dense"] = phases["dense"]["tokens"]
    return models, tokens


def evaluation_phase(out, settings, domains, mixed, phases, note, ready) -> None:
    """Perplexity of every model on every domain, unless its inputs are unchanged."""
    from modularforge.mixture.moe import routing_fractions
    from modularforge.training.evaluate import (
        PerplexityMatrix,
        comparison_from_matrix,
        count_parameters,
        perplexity_matrix,
        routed_loss,
    )

    inputs = {
        name: entry.get("sha256")
        for name, entry in [("shared", phases["shared"]), ("dense", phases.get("dense", {}))]
    }
    inputs["phase1_ffn"] = phases["shared"].get("phase1_ffn", {}).get("sha256")
    inputs["experts"] = [phases["experts"][d]["sha256"] for d in domains]
    inputs["routers"] = {k: v["sha256"] for k, v in phases.get("routers", {}).items()}
    inputs["mixing"] = phases.get("mixing", {}).get("sha256")
    inputs["eval_max_batches"] = settings.eval_max_batches
    inputs["mixed_validation"] = "equal windows per domain"
    if phases.get("evaluation", {}).get("inputs") == inputs:
        note("skipped evaluation", "evaluation: inputs unchanged, skipping")
        return
    ready()
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
