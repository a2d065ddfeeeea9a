"""Training: data, the two phases' loops, resumable state, evaluation, generation.

`data` (the shipped corpus, tokenizers, batches), `tokenizer_file`, `preflight`
(every setting checked before training), `train` (phase 1: the whole model;
phase 2: one expert on a frozen trunk), `training_state` (bit-identical resume),
`evaluate` (perplexity per domain), `generate` (sampling).

Depends on `model`, `files` and `measure`. Chapter 3 onwards.
"""
