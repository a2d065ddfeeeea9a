"""Text generation: greedy decoding and sampling with temperature, top-k and top-p (nucleus).

Works with any model that maps token ids (B, T) to logits (B, T, vocab) and has a
`.config` with `max_seq_len`: `ModuleTrainerModel` and `MixtureOfExperts` alike.
Each step feeds the last `max_seq_len` tokens (the positions table ends there),
takes the logits of the last position, filters them, and picks the next token.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modularforge.training.data import decode, encode

__all__ = ["generate", "generate_text", "scale_logits", "top_k_filter", "top_p_filter"]

#: Slack when comparing cumulative probabilities with p: softmax and cumsum round, so a
#: nucleus whose probabilities add up to p "exactly" may sum to p - 1e-8 (float32 logits).
TOP_P_TOLERANCE = 1e-6


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits along the last dimension; set the others to -inf.

    Exactly k survive: among equal logits the lower vocabulary index wins (a stable
    sort), so the result never depends on how `torch.topk` happens to break ties.
    k >= vocabulary size keeps everything.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {k!r}")
    if k >= logits.shape[-1]:
        return logits.clone()
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose probability reaches p; others -> -inf.

    Tokens are ranked by probability (ties: lower index first); a token is kept
    when the probability of the tokens ranked before it is still below p, so the
    token that makes the sum reach p is kept and none after it. The most probable
    token always survives, even when its probability alone exceeds p; p = 1 keeps
    every token. The result is in the original vocabulary order (only values
    change, nothing is reordered). Probabilities are summed in float64 and compared
    with a tolerance of `TOP_P_TOLERANCE`.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be a float in (0, 1], got {p!r}")
    if p == 1.0:
        return logits.clone()
    probs = torch.softmax(logits.double(), dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass ranked above each
    keep_sorted = mass_before < p - TOP_P_TOLERANCE
    keep_sorted[..., 0] = True  # the most probable token always survives
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to vocab order
    return logits.masked_fill(~keep, float("-inf"))


def _check_sampling(
    max_new_tokens: object, temperature: object, top_k: object, top_p: object
) -> None:
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 0
    ):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(
            f"temperature must be a finite float > 0 (any size: tiny values approach "
            f"greedy decoding, huge ones a uniform draw), got {temperature!r} "
            "(for deterministic output use greedy=True)"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0
    ):
        raise ValueError(f"top_p must be None or a float in (0, 1], got {top_p!r}")


def scale_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits / temperature, safe for every finite temperature > 0 (float64 result).

    The largest logit is subtracted first, so it becomes exactly 0 and stays 0
    however small the temperature: the others go to -inf at worst, and the softmax
    is then a one-hot on the argmax (greedy) instead of inf/inf = NaN. Done in
    float64, where 1e-45 is still a positive number (in float32 it is the
    smallest subnormal and the quotient overflows).
    """
    logits = logits.double()
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    return shifted / float(temperature)


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Append `max_new_tokens` tokens to `input_ids`; return prompt + continuation.

    `input_ids` is (B, T) or (T,); the result has the same rank. Greedy decoding
    takes the argmax (temperature, top-k and top-p do not change it); sampling
    divides the logits by `temperature` (any finite value > 0: see `scale_logits`
    for why 1e-45 works), applies top-k then top-p, and draws from
    the softmax with `generator` (seed it for reproducible text; it must live on
    the model's device). Token ids must have an integer dtype: float or complex
    ids are refused rather than truncated. The model runs in eval mode (no dropout) and its mode is
    restored afterwards. Contexts longer than `model.config.max_seq_len` are
    cropped to their last `max_seq_len` tokens.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() not in (1, 2):
        raise ValueError("input_ids must be a tensor of shape (T,) or (B, T)")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(
            f"input_ids must hold integer token ids (torch.long), got {input_ids.dtype}; "
            "casting would silently truncate them. Use the ids the tokenizer returned"
        )
    if input_ids.shape[-1] == 0:
        raise ValueError("input_ids must hold at least one token (a prompt)")
    squeeze = input_ids.dim() == 1
    device = next(model.parameters()).device
    ids = (input_ids.unsqueeze(0) if squeeze else input_ids).to(device=device, dtype=torch.long)
    max_seq_len = model.config.max_seq_len
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits = model(ids[:, -max_seq_len:])[:, -1, :].float()  # (B, vocab)
            if greedy:
                next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = scale_logits(logits, temperature)
                if top_k is not None:
                    logits = top_k_filter(logits, top_k)
                if top_p is not None:
                    logits = top_p_filter(logits, top_p)
                probs = torch.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            ids = torch.cat([ids, next_id], dim=1)
    finally:
        model.train(was_training)
    return ids[0] if squeeze else ids


def generate_text(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int, **sampling) -> str:
    """Encode `prompt`, generate, and decode: returns the prompt followed by the continuation.

    `sampling` takes the keyword arguments of `generate` (greedy, temperature,
    top_k, top_p, generator).
    """
    prompt_ids = encode(prompt, tokenizer)
    return decode(generate(model, prompt_ids, max_new_tokens, **sampling), tokenizer)
