"""Memory accounting: what the design document claims, what the model needs, what a step uses.

Two functions, one per side of the argument:

* `memory_budget` works the bytes out on paper, from the `ModelConfig` alone:
  parameters (frozen and trainable), gradients, optimizer state and the
  activations autograd saves for backward.
* `measure_training_step` runs one real forward + backward + optimizer step and
  reads the same categories off live tensors.

The book prints both side by side, so every "MB" in the prose is a measured or
computed number, never a typed one. The document's own figures are kept as named
constants below, for reference lines in charts only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from modularforge.measure.heap_tracker import HeapPeakTracker, heap_bytes_in_use  # noqa: F401  (re-exported)
from modularforge.measure.storage_tracker import StoragePeakTracker
from modularforge.model.config import ModelConfig

# --- The design document's figures (design-doc.md, "Memory Budget Proof") -------------
# Reference lines for charts and tables. They are quoted, not results: the book
# recomputes every one of them from the live model and explains the differences.
MB = 1_000_000  #: the document's "MB" are decimal: 8.4M params x 4 B = "33 MB"
DOC_SHARED_PARAMS = 18_000_000  #: "Shared (frozen inference) 18M"
DOC_SHARED_MB = 72  #: "72 MB" for the frozen shared trunk
DOC_EXPERT_PARAMS = 8_400_000  #: "Expert (trainable) 8.4M"
DOC_EXPERT_MB = 33  #: "33 MB", and "+ 33 MB grads"
DOC_ADAMW_MB = 67  #: "AdamW states (2 per param) 8.4Mx2 ... 67 MB"
DOC_BUDGET_MB = 205  #: "Total ~35M ~205 MB" (frozen shared + one trainable expert)
DOC_UNFROZEN_MB = 516  #: "pushing total to 516 MB" (nothing frozen)
DOC_UNFROZEN_RATIO = 2.5  #: "516 MB -- 2.5x more"

#: Bytes of one element of torch.int64, used for token ids and targets kept for backward.
_INT64_BYTES = 8
#: Bytes of the float32 statistics (mean, rstd) that LayerNorm keeps per row.
_FP32_BYTES = 4


# --- Parameter counts ------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts by component, worked out from the architecture.

    The LM head is tied to the token embedding, so it adds no parameters: the
    16384 x 512 matrix is counted once, under `token_embedding`.
    """

    token_embedding: int  # vocab_size x d_model, shared with the LM head
    attention_per_layer: int  # LayerNorm + QKV + output projection, with biases
    output_norm: int  # final LayerNorm
    expert_per_layer: int  # LayerNorm + fc1 + fc2, with biases
    n_layers: int

    @property
    def attention(self) -> int:
        """All layers' attention blocks."""
        return self.attention_per_layer * self.n_layers

    @property
    def shared(self) -> int:
        """The whole shared trunk: embedding (= LM head), attention, output norm."""
        return self.token_embedding + self.attention + self.output_norm

    @property
    def expert(self) -> int:
        """One whole expert: one FFN block per layer."""
        return self.expert_per_layer * self.n_layers

    @property
    def total(self) -> int:
        """Shared trunk + one expert: the trainer model."""
        return self.shared + self.expert

    def as_dict(self) -> dict[str, int]:
        """Components and totals, for tables."""
        return {
            "token_embedding (= tied LM head)": self.token_embedding,
            "attention (all layers)": self.attention,
            "output_norm": self.output_norm,
            "shared total": self.shared,
            "expert (all layers)": self.expert,
            "trainer model total": self.total,
        }


def parameter_counts(config: ModelConfig) -> ParameterCounts:
    """Count parameters from the config alone (a test pins these to a built model)."""
    d, f = config.d_model, config.d_ff
    layer_norm = 2 * d  # weight + bias
    return ParameterCounts(
        token_embedding=config.vocab_size * d,
        attention_per_layer=layer_norm + (d * 3 * d + 3 * d) + (d * d + d),
        output_norm=layer_norm,
        expert_per_layer=layer_norm + (d * f + f) + (f * d + d),
        n_layers=config.n_layers,
    )


#: Parameter tensors per component: AdamW keeps one 4-byte `step` tensor for each.
_TENSORS_PER_ATTENTION = 6  # norm.weight, norm.bias, qkv.weight, qkv.bias, proj.weight, proj.bias
_TENSORS_PER_EXPERT_LAYER = 6  # norm.weight, norm.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias
_TENSORS_SHARED_EXTRA = 3  # token_embedding.weight, output_norm.weight, output_norm.bias


def _parameter_tensor_counts(config: ModelConfig) -> tuple[int, int]:
    """(shared, expert) number of parameter tensors."""
    shared = _TENSORS_SHARED_EXTRA + _TENSORS_PER_ATTENTION * config.n_layers
    return shared, _TENSORS_PER_EXPERT_LAYER * config.n_layers


# --- Activations -----------------------------------------------------------------------


#: The attention paths the analytic model knows ("auto" is PyTorch's choice, which
#: the formulas cannot know: pass the path the step really takes).
MODELLED_ATTENTION_PATHS = ("fused", "math")


def check_step_settings(frozen: bool, attention_path: str, trunk_dropout: bool) -> None:
    """Reject settings the analytic model does not describe, saying what to pass instead.

    * A frozen trunk runs in eval mode, so its dropout is off: `trunk_dropout`
      must be False when `frozen`.
    * On CPU the fused attention kernel has no dropout, so attention dropout
      forces the math path; CUDA's flash kernel with dropout (which keeps an RNG
      state instead of masks) is not modelled.
    """
    if attention_path not in MODELLED_ATTENTION_PATHS:
        raise ValueError(
            f"attention_path must be one of {MODELLED_ATTENTION_PATHS}, got {attention_path!r}"
        )
    if not isinstance(trunk_dropout, bool):
        raise ValueError(f"trunk_dropout must be a bool, got {trunk_dropout!r}")
    if frozen and trunk_dropout:
        raise ValueError(
            "trunk_dropout=True with frozen=True: a frozen trunk runs in eval mode, so its "
            "dropout is off; pass trunk_dropout=False"
        )
    if trunk_dropout and attention_path == "fused":
        raise ValueError(
            "trunk_dropout=True needs attention_path='math': the CPU fused kernel has no "
            "dropout, so attention dropout runs on the math path"
        )


def activation_breakdown(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    frozen: bool = True,
    dtype: torch.dtype = torch.float32,
    attention_path: str = "fused",
    trunk_dropout: bool = False,
) -> dict[str, int]:
    """Bytes that autograd keeps alive between forward and backward, by component.

    Worked out from what each op saves for its backward (PyTorch 2.x, CPU, no
    attention mask), counting each storage once. The attention path and the
    trunk's dropout are inputs, not guesses: the trainer model's default (trunk
    dropout on in training, PyTorch choosing the kernel) takes the math path on
    CPU whenever the trunk trains, which is a different step from the frozen one
    in more than `requires_grad`.

    * LayerNorm keeps its input plus a float32 mean and 1/std per row.
    * A Linear keeps its input only if its weight is trainable (to form the
      weight gradient); a frozen Linear keeps nothing of its own.
    * GELU keeps its input; dropout (p > 0, training) keeps its scaled mask as a
      full tensor of the activation's dtype.
    * Fused attention keeps q, k, v (views of one (B, T, 3C) tensor), its
      output and one float32 logsumexp per row and head: nothing quadratic.
    * The math path keeps the scaled q and k, v, and the (B, heads, T, T)
      softmax probabilities -- the quadratic term; with attention dropout it
      keeps two more (B, heads, T, T) tensors, the mask and the dropped
      probabilities. v is reshaped to (B*heads, T, hs): a copy, except at batch
      1, where the reshape is a view that keeps the whole (1, T, 3C) qkv output
      alive.
    * The loss keeps log-softmax over the vocabulary, (B, T, vocab), plus targets.

    With the trunk frozen, the first attention block records nothing at all: its
    input (the embedding) needs no gradient and neither do its weights.
    """
    check_step_settings(frozen, attention_path, trunk_dropout)
    el = torch.empty((), dtype=dtype).element_size()
    b, t, d, f, v = batch_size, seq_len, config.d_model, config.d_ff, config.vocab_size
    h = config.n_heads
    btc = b * t * d * el  # one residual-stream-sized tensor
    ln_stats = 2 * b * t * _FP32_BYTES  # LayerNorm mean + rstd
    shared_dropout = trunk_dropout and config.dropout > 0
    expert_dropout = config.expert_dropout > 0
    probabilities = b * h * t * t * el  # one (B, heads, T, T) tensor
    v_math = 3 * btc if b == 1 else btc  # the math path's v (see above)

    parts: dict[str, int] = {}
    if not frozen:
        parts["embedding (token ids)"] = b * t * _INT64_BYTES
        if shared_dropout:
            parts["embedding (dropout mask)"] = btc
    for layer in range(config.n_layers):
        if frozen and layer == 0:
            attention = 0
        elif attention_path == "fused":
            # LN input + stats, q/k/v storage, flash output, logsumexp; a trained
            # trunk also keeps the LN output (qkv's input) and the output again as
            # proj's input (one storage with the flash output after the reshape copy).
            attention = btc + ln_stats + 3 * btc + btc + b * h * t * _FP32_BYTES
            if not frozen:
                attention += btc
        else:
            # LN input + stats, scaled q and k, v, the probabilities; a trained
            # trunk also keeps the LN output and proj's input.
            attention = btc + ln_stats + 2 * btc + v_math + probabilities
            if not frozen:
                attention += 2 * btc
            if shared_dropout:
                # dropout mask + dropped probabilities, and the residual dropout mask
                attention += 2 * probabilities + btc
        parts[f"attention {layer}"] = attention
        # Expert: LN input + stats, LN output (fc1 input), GELU input, fc2 input, and masks.
        expert = btc + ln_stats + btc + 2 * b * t * f * el
        if expert_dropout:
            expert += b * t * f * el + btc
        parts[f"expert {layer}"] = expert
    head = btc + ln_stats + (0 if frozen else btc)  # the head's input only if it trains
    parts["output norm + LM head"] = head
    # log_softmax output (B*T, vocab), int64 targets, and nll_loss's scalar total_weight.
    parts["loss (log-softmax over vocab)"] = b * t * v * el + b * t * _INT64_BYTES + el
    return parts


# --- The budget ------------------------------------------------------------------------

_OPTIMIZER_STATE_PER_PARAM = {"adamw": 2, "adam": 2, "sgd": 0}
#: Size of the scalar `step` tensor that Adam/AdamW keep per parameter tensor (float32).
ADAM_STEP_TENSOR_BYTES = 4


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes by category for one training step; shared by the analytic and measured sides."""

    params_frozen: int
    params_trainable: int
    grads: int
    optimizer_state: int
    activations: int
    peak: int | None = None  # measured high-water mark (None for the analytic budget)
    loss: float | None = None  # the measured step's loss (None for the analytic budget)
    details: dict[str, int] = field(default_factory=dict)

    @property
    def params(self) -> int:
        """All parameters, frozen and trainable."""
        return self.params_frozen + self.params_trainable

    @property
    def static(self) -> int:
        """What stays allocated across steps: params, grads, optimizer state.

        This is the quantity the design document's table adds up.
        """
        return self.params + self.grads + self.optimizer_state

    @property
    def total(self) -> int:
        """Static memory plus the activations saved for backward."""
        return self.static + self.activations

    def as_mb(self) -> dict[str, float]:
        """Every category in decimal megabytes, as the design document writes them."""
        values = {
            "params (frozen)": self.params_frozen,
            "params (trainable)": self.params_trainable,
            "grads": self.grads,
            "optimizer state": self.optimizer_state,
            "activations": self.activations,
            "static total": self.static,
            "total": self.total,
        }
        if self.peak is not None:
            values["measured peak"] = self.peak
        return {name: value / MB for name, value in values.items()}


def static_budget(
    config: ModelConfig, frozen: bool = True, optimizer: str = "adamw", el: int = 4
) -> MemoryBreakdown:
    """The design document's table as a formula: what a step holds whatever the batch.

    Frozen parameters cost their weights only; trainable ones also a gradient
    and the optimizer's state. `el` is the bytes per number (4 for float32).
    """
    if optimizer not in _OPTIMIZER_STATE_PER_PARAM:
        raise ValueError(
            f"optimizer must be one of {sorted(_OPTIMIZER_STATE_PER_PARAM)}, got {optimizer!r}"
        )
    counts = parameter_counts(config)
    shared_tensors, expert_tensors = _parameter_tensor_counts(config)
    trainable = counts.expert if frozen else counts.total
    trainable_tensors = expert_tensors if frozen else expert_tensors + shared_tensors
    optimizer_state = _OPTIMIZER_STATE_PER_PARAM[optimizer] * trainable * el
    if optimizer in ("adam", "adamw"):  # plus a 4-byte `step` per parameter tensor
        optimizer_state += ADAM_STEP_TENSOR_BYTES * trainable_tensors
    return MemoryBreakdown(
        params_frozen=counts.shared * el if frozen else 0,
        params_trainable=trainable * el,
        grads=trainable * el,  # one gradient per trainable number
        optimizer_state=optimizer_state,
        activations=0,
    )


def memory_budget(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    frozen: bool = True,
    optimizer: str = "adamw",
    dtype: torch.dtype = torch.float32,
    attention_path: str = "fused",
    trunk_dropout: bool = False,
) -> MemoryBreakdown:
    """Analytic bytes for one training step of the trainer model.

    `frozen=True` is the design: shared trunk frozen, one expert trainable.
    `frozen=False` trains everything (the document's "without freezing" case).
    The defaults compare the two fairly: same attention path (fused) and no
    trunk dropout on either side, so they differ in `requires_grad` alone. Pass
    `attention_path="math"` and `trunk_dropout=True` for the trainer model's
    own default when the trunk trains on CPU (see `activation_breakdown`).
    The static terms come from `static_budget`; the activations from
    `activation_breakdown`.
    """
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if seq_len > config.max_seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the config's max_seq_len {config.max_seq_len}")
    el = torch.empty((), dtype=dtype).element_size()
    static = static_budget(config, frozen, optimizer, el)
    details = activation_breakdown(
        config,
        batch_size,
        seq_len,
        frozen=frozen,
        dtype=dtype,
        attention_path=attention_path,
        trunk_dropout=trunk_dropout,
    )
    return replace(static, activations=sum(details.values()), details=details)


# --- Measurement -----------------------------------------------------------------------


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views and ties counted once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


class SavedTensorCounter:
    """Counts the distinct storages autograd saves for backward, leaving parameters out.

    Parameters are saved too (a Linear keeps its weight to form the input's
    gradient), but they are already counted as parameters, so storages that
    belong to the model are excluded.
    """

    def __init__(self, model: nn.Module) -> None:
        self._excluded = {_storage_key(t) for t in model.parameters()}
        self._excluded |= {_storage_key(t) for t in model.buffers()}
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self._excluded:
            self.storages[key] = tensor.untyped_storage().nbytes()
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def __enter__(self) -> SavedTensorCounter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        """Total bytes of the distinct saved storages."""
        return sum(self.storages.values())


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor the optimizer keeps (exp_avg, exp_avg_sq, step, ...)."""
    return [
        value
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    ]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def measure_training_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> MemoryBreakdown:
    """Run one real forward + backward + optimizer step and measure its memory.

    * params, grads, optimizer state: distinct tensor storages after the step.
    * activations: distinct non-parameter storages saved for backward
      (`torch.autograd.graph.saved_tensors_hooks`).
    * peak: on CUDA `torch.cuda.max_memory_allocated`; on CPU the static tensors
      alive at the start of the step plus the heap high-water mark above the
      starting level: the tensor storages made in the step, summed after every
      aten op (`storage_tracker.StoragePeakTracker`; it agrees with the heap
      high-water mark of `HeapPeakTracker` within 1% (tests/measure/test_storage_tracker.py), and
      its cost does not grow as the process's heap fragments).

    Gradients are reset to None first, so the peak includes their allocation.
    Warm up with one step before measuring: the first matmul allocates the BLAS
    workspace, and the optimizer allocates its state on its first step.
    """
    inputs, targets = batch
    device = _device_of(model)
    inputs, targets = inputs.to(device), targets.to(device)
    parameters = list(model.parameters())
    model.train()
    optimizer.zero_grad(set_to_none=True)
    static_at_start = storage_bytes(parameters) + storage_bytes(optimizer_state_tensors(optimizer))
    counter = SavedTensorCounter(model)

    def step() -> torch.Tensor:
        with counter:
            logits = model(inputs)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        del logits  # only log-softmax's saved copy lives on, as in a training loop
        loss.backward()
        optimizer.step()
        return loss

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        loss = step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with StoragePeakTracker() as tracker:
            loss = step()
        peak = static_at_start + tracker.increase

    trainable = [p for p in parameters if p.requires_grad]
    frozen = [p for p in parameters if not p.requires_grad]
    grads = [p.grad for p in parameters if p.grad is not None]
    return MemoryBreakdown(
        params_frozen=storage_bytes(frozen),
        params_trainable=storage_bytes(trainable),
        grads=storage_bytes(grads),
        optimizer_state=storage_bytes(optimizer_state_tensors(optimizer)),
        activations=counter.bytes,
        peak=peak,
        loss=float(loss.detach()),
    )
