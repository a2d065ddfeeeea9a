"""The mixture of experts: experts assembled behind a learned router per layer.

`moe` (the mixture and its router training), `routing` (top-1, top-2, soft; the
load-balancing loss, after Switch and GShard), `branching` (experts branched from
the phase-1 FFNs, as in BTM/BTX), `mixing` (BTX's short fine-tune of the whole
mixture).

Depends on `training`, `measure`, `files` and `model`. Chapters 8 and 11.
"""
