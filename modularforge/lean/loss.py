"""Cross-entropy over chunks of positions, holding one (positions x vocab) buffer per chunk.

`F.cross_entropy` on a chunk of logits keeps three tensors of that size alive in
its backward (the log-softmax it saved, nll_loss's gradient and log-softmax's
gradient), and makes them one op at a time, each a fresh allocation the CPU
must page in. The gradient of the summed loss with respect to the logits is
simply softmax(logits) - onehot(target), so it can be formed in the logits'
own buffer: subtract the row maximum, exponentiate, divide by the row sum,
subtract one at each target, scale. One buffer of chunk x vocab floats, and
the loss comes out of the same pass: log(row sum) + max - logit[target].

With a third of the memory per position, the chunk can be three times longer
for the same bytes, and the LM head's matmuls then read the (vocab x d_model)
weight three times less often: at 32 positions per chunk they are bound by
that read, not by arithmetic.
"""

from __future__ import annotations

import torch

from modularforge.model.trainer_model import ModuleTrainerModel


def _add_matmul_into_grad(parameter: torch.nn.Parameter, a: torch.Tensor, b: torch.Tensor) -> None:
    """`parameter.grad += a @ b` in place (or make it the gradient): no weight-sized temporary."""
    if parameter.grad is None:
        parameter.grad = a @ b
    else:
        parameter.grad.addmm_(a, b)


def softmax_cross_entropy_(logits: torch.Tensor, targets: torch.Tensor, scale: float) -> float:
    """Sum of token losses of `logits` (n, vocab); turns `logits` into its scaled gradient.

    In place: afterwards `logits` holds scale * (softmax(logits) - onehot(targets)),
    the gradient of scale * sum(losses). Returns the unscaled summed loss.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    picked = logits[rows, targets]  # (n,) the target logits, before they are overwritten
    top = logits.amax(dim=1, keepdim=True)  # (n, 1)
    logits.sub_(top).exp_()
    total = logits.sum(dim=1, keepdim=True)  # (n, 1)
    loss = (total.log() + top).squeeze(1).sub_(picked).sum()
    logits.div_(total)
    logits[rows, targets] -= 1.0
    logits.mul_(scale)
    return float(loss)


def one_buffer_loss_backward(
    model: ModuleTrainerModel,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    scale: float,
    chunk: int | None,
) -> float:
    """Backward of `scale * sum of token losses` from the final hidden state; the scaled loss.

    The output LayerNorm runs once under autograd; the tied head and the loss run
    per chunk without it, writing the gradient at the normed state by hand (and
    into the head's weight gradient when the trunk is trained). One backward
    through the norm and the layers follows.
    """
    batch, seq_len, d_model = hidden.shape
    chunk = min(chunk or seq_len, seq_len)
    detached = hidden.detach().requires_grad_(True)
    normed = model.shared.output_norm(detached)  # (b, T, C), autograd keeps the LN stats
    weight = model.shared.token_embedding.weight  # (vocab, C), the tied head
    grad_normed = torch.empty_like(normed)
    total = 0.0
    with torch.no_grad():
        for start in range(0, seq_len, chunk):
            x = normed[:, start : start + chunk].reshape(-1, d_model)  # (n, C)
            logits = x @ weight.t()  # (n, vocab): the one buffer
            total += softmax_cross_entropy_(
                logits, targets[:, start : start + chunk].reshape(-1), scale
            )
            grad_normed[:, start : start + chunk] = (logits @ weight).view(batch, -1, d_model)
            if weight.requires_grad:
                _add_matmul_into_grad(weight, logits.t(), x)
            del logits, x
    normed.backward(grad_normed)
    del normed, grad_normed
    grad = detached.grad
    del detached
    hidden.backward(grad)
    return total * scale
