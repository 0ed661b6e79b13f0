"""Torch normalisation layers for the local (non-TE) spec, usable with sequence parallelism.

Megatron-Core's fallback norm (``WrappedTorchNorm``, used when neither Transformer Engine nor apex is
installed) refuses ``sequence_parallel``, yet MoE with TP > 1 requires it. With sequence parallelism
each TP rank normalises a different slice of the sequence, so the norm weights' gradients must be
summed over TP; Megatron's ``finalize_model_grads`` does that for parameters tagged
``sequence_parallel``. This module builds plain torch LayerNorm / RMSNorm and sets that tag.
"""

from __future__ import annotations

import torch


class SequenceParallelTorchNorm:
    """Factory with the signature of Megatron's norm modules; returns a torch norm module."""

    def __new__(
        cls,
        config,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ):
        if config.layernorm_zero_centered_gamma:
            raise ValueError("zero-centered gamma is not supported by the torch norm")
        kind = config.normalization
        if kind == "LayerNorm":
            module = torch.nn.LayerNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        elif kind == "RMSNorm":
            module = torch.nn.RMSNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        else:
            raise ValueError(f"unsupported normalization {kind!r}: use LayerNorm or RMSNorm")
        for param in module.parameters():
            setattr(param, "sequence_parallel", bool(config.sequence_parallel))
        return module
