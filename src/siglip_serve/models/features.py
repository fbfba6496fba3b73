"""One forward of a transformers SigLIP vision tower that keeps one layer's tokens and the pooled output.

The layer numbering is `siglip_serve.features`'s: 0..L-1 are transformers' `hidden_states[k]`, L is
`last_hidden_state` (after `post_layernorm`). Intermediate layers are taken from transformers' own
`output_hidden_states` capture, so they are exactly what transformers returns; where transformers can
select one index (`output_hidden_states=[k]`, utils/output_capturing.py), only that layer is kept,
instead of all L+1 of them (28 x 3.4 MB per so400m-384 image in float32).
"""

from __future__ import annotations

import functools
from typing import Any

import torch


@functools.cache
def selects_one_hidden_state() -> bool:
    """Asked at the first feature request, not at import: importing transformers costs ~0.5 s of every CLI run
    (models/towers.py imports this module; HF checkpoints no longer need transformers to run)."""
    try:
        from transformers.utils.output_capturing import selected_hidden_states
    except ImportError:  # older transformers 5.x: a flag only
        return False
    return selected_hidden_states(3) == [3]


def eager(module: torch.nn.Module) -> torch.nn.Module:
    """The module behind torch.compile's wrapper: transformers' capture hooks read a ContextVar, which dynamo
    cannot trace (output_capturing.py), and feature batches are not padded to the compiled buckets."""
    return getattr(module, "_orig_mod", module)


def run_vision_layer(vision_model: torch.nn.Module, layer: int, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B, N, d] of `layer` (0..L), pooler_output [B, d]) from one forward of `vision_model`."""
    num_layers = int(vision_model.config.num_hidden_layers)
    if not 0 <= layer <= num_layers:
        raise ValueError(f"layer {layer} is not in 0..{num_layers} (resolve it with PatchLayout.resolve_layer)")
    if layer == num_layers:  # no capture at all: the final output is the forward's own
        out = vision_model(**inputs)
        return out.last_hidden_state, out.pooler_output
    # A list, not the bare index: transformers tests the option for truth, and 0 would capture nothing.
    out = vision_model(**inputs, output_hidden_states=[layer] if selects_one_hidden_state() else True)
    return out.hidden_states[layer], out.pooler_output
