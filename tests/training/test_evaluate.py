"""Perplexity matrix, comparison table and plots: real values, real labels."""

import math

import matplotlib

matplotlib.use("Agg")
import pytest
import torch

from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import DomainData
from modularforge.training.evaluate import (
    PerplexityMatrix,
    comparison_from_matrix,
    comparison_table,
    perplexity,
    perplexity_matrix,
    plot_perplexity_heatmap,
    plot_routing,
    routed_loss,
    specialization,
)
from modularforge.training.train import evaluate, evaluate_validation


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = ModelConfig.tiny()
    shared = SharedComponents(config).freeze()
    return {f"m{i}": ModuleTrainerModel(shared, config, expert_idx=i) for i in range(2)}


@pytest.fixture(scope="module")
def domains():
    g = torch.Generator().manual_seed(1)
    return {"a": torch.randint(0, 2048, (400,), generator=g), "b": torch.arange(400) % 7}


def test_perplexity_is_exp_of_the_validation_loss(models, domains):
    model = models["m0"]
    loss = evaluate(model, domains["a"], 4, 16, 2)
    assert perplexity(model, domains["a"], 4, 16, 2) == pytest.approx(math.exp(loss))
    # an untrained model is close to uniform over the 2048-token vocabulary
    assert 1000 < perplexity(model, domains["a"], 4, 16, 2) < 4000


def test_matrix_has_one_row_per_model_and_one_column_per_domain(models, domains):
    matrix = perplexity_matrix(models, domains, 4, 16, 2)
    assert matrix.rows == ["m0", "m1"] and matrix.cols == ["a", "b"]
    values = matrix.as_tensor()
    assert values.shape == (2, 2)
    assert torch.isfinite(values).all() and (values > 1).all()
    assert matrix["m1", "b"] == pytest.approx(perplexity(models["m1"], domains["b"], 4, 16, 2))
    assert PerplexityMatrix.from_dict(matrix.to_dict()) == matrix


def test_matrix_rejects_ragged_values_and_empty_inputs(models):
    with pytest.raises(ValueError, match="2 x 2"):
        PerplexityMatrix(["x", "y"], ["a", "b"], [[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="at least one"):
        perplexity_matrix(models, {})


def test_best_rows_and_specialization_verdict():
    matrix = PerplexityMatrix(["e-a", "e-b"], ["a", "b"], [[10.0, 40.0], [30.0, 20.0]])
    assert matrix.best_row("a") == "e-a" and matrix.best_col("e-b") == "b"
    verdict = specialization(matrix, {"a": "e-a", "b": "e-b"})
    assert verdict.holds and verdict.n_domains_won == 2
    assert verdict.margin == {"a": 3.0, "b": 2.0}
    swapped = specialization(matrix, {"a": "e-b", "b": "e-a"})
    assert not swapped.holds and swapped.n_domains_won == 0


def test_heatmap_labels_cells_and_colorbar():
    matrix = PerplexityMatrix(["e0", "e1"], ["x", "y", "z"], [[1.5, 2, 3], [4, 5, 6.25]])
    ax = plot_perplexity_heatmap(matrix)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "z"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["e0", "e1"]
    assert ax.get_xlabel() and ax.get_ylabel()
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(["1.5", "2.0", "3.0", "4.0", "5.0", "6.2"])
    assert ax.figure.axes[-1].get_ylabel() == "perplexity"


def test_comparison_table_reuses_the_same_scores(models, domains):
    tokens = {"m0": 100, "m1": 200}
    table = comparison_table(models, tokens, domains["a"], {"b": domains["b"]}, 4, 16, 2, 300)
    assert [r.name for r in table.rows] == ["m0", "m1"]
    assert table.row("m1").training_tokens == 200 and table.system_tokens == 300
    assert table.row("m0").mixed == pytest.approx(perplexity(models["m0"], domains["a"], 4, 16, 2))
    assert table.best("b") in {"m0", "m1"}
    markdown = table.to_markdown()
    assert "| m1 | 200 |" in markdown and "**" in markdown
    with pytest.raises(ValueError, match="no entry"):
        comparison_table(models, {"m0": 1}, domains["a"], {}, 4, 16, 2)
    with pytest.raises(ValueError, match="'mixed' column"):
        comparison_from_matrix(PerplexityMatrix(["m"], ["a"], [[2.0]]), {"m": 1})


def test_routing_plot_stacks_shares_per_domain():
    fractions = {
        "english": torch.tensor([[0.8, 0.2], [0.6, 0.4]]),
        "python": torch.tensor([[0.1, 0.9], [0.3, 0.7]]),
    }
    ax = plot_routing(fractions, expert_names=["e0", "e1"])
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([0.7, 0.2, 0.3, 0.8])  # layer means, expert by expert
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["e0", "e1"]
    ax1 = plot_routing(fractions, layer=1)
    assert [p.get_height() for p in ax1.patches] == pytest.approx([0.6, 0.3, 0.4, 0.7])
    with pytest.raises(ValueError, match="3 expert names"):
        plot_routing(fractions, expert_names=["a", "b", "c"])


def _mixture(domains):
    val = torch.cat(list(domains.values()))
    return DomainData("mixed", train=val, val=val, val_parts=dict(domains))


def test_mixed_score_weights_every_domain_equally(models, domains):
    model, mixed = models["m0"], _mixture(domains)
    # 400 tokens of each domain: 24 windows of 16 each, all scored, half from each domain
    per_domain = [evaluate(model, domains[d], 4, 16) for d in ("a", "b")]
    expected = sum(per_domain) / 2
    assert math.log(perplexity(model, mixed, 4, 16)) == pytest.approx(expected, rel=1e-6)
    assert evaluate_validation(model, mixed, 4, 16) == pytest.approx(expected, rel=1e-6)
    # the joined stream's first windows are domain a's alone: a different, one-sided number
    assert evaluate(model, mixed.val, 4, 16, 2) == pytest.approx(
        evaluate(model, domains["a"], 4, 16, 2)
    )


def test_routed_loss_scores_each_domain_with_its_own_model(models, domains):
    mixed = _mixture(domains)
    routed = routed_loss({"a": models["m0"], "b": models["m1"]}, mixed, 4, 16)
    by_hand = (
        evaluate(models["m0"], domains["a"], 4, 16) + evaluate(models["m1"], domains["b"], 4, 16)
    ) / 2
    assert routed == pytest.approx(by_hand, rel=1e-6)
    swapped = routed_loss({"a": models["m1"], "b": models["m0"]}, mixed, 4, 16)
    assert swapped != pytest.approx(routed, rel=1e-6)  # the routing really changes the score
    with pytest.raises(ValueError, match="no model for domain"):
        routed_loss({"a": models["m0"]}, mixed, 4, 16)


def test_routing_by_layer_draws_one_panel_per_layer():
    from modularforge.training.evaluate import plot_routing_by_layer

    fractions = {
        "a": torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        "b": torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]),
    }
    fig = plot_routing_by_layer(fractions, ["x", "y", "z"], title="t")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["layer 0", "layer 1"]
    # layer 0 sends all of "a" to expert x, layer 1 all of "a" to expert z
    heights = [[round(p.get_height(), 3) for p in ax.patches] for ax in axes]
    assert heights[0][:2] == [1.0, 0.0] and heights[1][4:6] == [1.0, 0.0]
    assert axes[0].get_legend() is None and axes[1].get_legend() is not None
