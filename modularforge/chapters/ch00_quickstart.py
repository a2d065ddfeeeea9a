"""The whole idea of the book in plain PyTorch, small enough to read in one sitting.

The quickstart chapter shows this module's source on the page and runs it: a
small language model whose trunk (embedding, attention, output norm, tied head)
is trained once with its own feed-forward blocks, then frozen; an expert (a
copy of those feed-forward blocks) is trained per domain against the frozen
trunk; and a label routes each prompt to its domain's expert. It uses nothing
of the package but its data loaders, so a reader sees every line that trains.
The later chapters build each piece properly: `modularforge.model` (the trunk
and experts), `modularforge.training.train` (the loop), `modularforge.mixture`
(a learned router instead of a label).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Pre-LN causal self-attention with its residual: part of the trunk, frozen after phase 1."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.norm, self.n_heads = nn.LayerNorm(d_model), n_heads
        self.qkv, self.out = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(self.norm(x)).view(B, T, 3, self.n_heads, C // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head size)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.out(y.transpose(1, 2).reshape(B, T, C))


def feed_forward(d_model: int, d_ff: int) -> nn.Sequential:
    """One layer's feed-forward block (the residual is added by the model): an expert's slot."""
    return nn.Sequential(
        nn.LayerNorm(d_model), nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model)
    )


class TinyLM(nn.Module):
    """A decoder-only model whose feed-forward blocks can be swapped for an expert's."""

    def __init__(self, vocab: int, d_model=128, n_heads=4, n_layers=2, d_ff=512, context=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        position = torch.arange(context)[:, None] / 10_000 ** (
            torch.arange(0, d_model, 2) / d_model
        )
        self.register_buffer("positions", torch.cat([position.sin(), position.cos()], dim=1))
        self.attention = nn.ModuleList(Attention(d_model, n_heads) for _ in range(n_layers))
        self.ffns = nn.ModuleList(feed_forward(d_model, d_ff) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, ids: torch.Tensor, ffns: nn.ModuleList | None = None) -> torch.Tensor:
        x = self.embed(ids) + self.positions[: ids.shape[1]]
        for attention, ffn in zip(self.attention, self.ffns if ffns is None else ffns, strict=True):
            x = attention(x)  # shared, frozen after phase 1
            x = x + ffn(x)  # phase 1's FFN, or the expert's
        return self.norm(x) @ self.embed.weight.T  # the LM head is tied to the embedding


def windows(tokens: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, ...]:
    """Inputs and next-token targets for windows of `context` tokens at `starts`."""
    x = torch.stack([tokens[s : s + context] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1 : s + 1 + context] for s in starts.tolist()])
    return x, y


def train(model, parameters, tokens, steps, ffns=None, lr=3e-3, batch=16, context=64, seed=0):
    """AdamW on `parameters` only; prints the loss 4 times. The same loop trains both phases."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    for step in range(1, steps + 1):
        x, y = windows(
            tokens, torch.randint(len(tokens) - context - 1, (batch,), generator=generator), context
        )
        loss = F.cross_entropy(model(x, ffns).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % (steps // 4) == 0:
            print(f"  step {step:>4}/{steps}: train loss {loss.item():.2f} nats", flush=True)


@torch.no_grad()
def evaluate(model, tokens, ffns=None, context=64, n_windows=64) -> float:
    """Mean next-token loss over `n_windows` evenly spaced validation windows, in nats."""
    x, y = windows(tokens, torch.linspace(0, len(tokens) - context - 2, n_windows).long(), context)
    return F.cross_entropy(model.eval()(x, ffns).flatten(0, 1), y.flatten()).item()


def branch_expert(model: TinyLM) -> nn.ModuleList:
    """A new expert: a trainable copy of phase 1's feed-forward blocks."""
    return copy.deepcopy(model.ffns).requires_grad_(True)


@torch.no_grad()
def generate(model, ids, ffns=None, new_tokens=30, temperature=0.8, top_k=20, seed=0):
    """Sample `new_tokens` tokens: softmax at `temperature` over the `top_k` likeliest."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(new_tokens):
        logits = model.eval()(ids[:, -model.positions.shape[0] :], ffns)[:, -1] / temperature
        top = logits.topk(top_k)
        pick = torch.multinomial(top.values.softmax(-1), 1, generator=generator)
        ids = torch.cat([ids, top.indices.gather(-1, pick)], dim=1)
    return ids


def uniform_loss(vocab: int) -> float:
    """The loss of a model that guesses every token equally likely: ln(vocab) nats."""
    return math.log(vocab)
