"""Core attention with an arbitrary mask: the one attention module of every dLLM layer spec.

It replaces Megatron-Core's ``DotProductAttention`` in the ``core_attention`` slot of
``SelfAttentionSubmodules`` and keeps its constructor and forward signature.

Mask contract (differs from Megatron's, where True means "masked out"):
    ``attention_mask`` is a bool tensor where **True = the query may attend to the key**, shaped
    ``[sq, sk]``, ``[b, sq, sk]`` or ``[b, 1, sq, sk]``; or a FlexAttention ``BlockMask``
    (flex backend). ``None`` is accepted only by a module built with ``AttnMaskType.causal``
    (the AR baseline); anywhere else it is an error, never a silent causal fallback. Every query row
    must allow at least one key (a row with none gives NaN, as softmax over nothing).

Backends (``backend=`` spec parameter):
    ``sdpa``  torch scaled_dot_product_attention with a dense bool mask (CPU default; any device);
              on CPU for long sequences it runs block-sparse (``sparse_sdpa.py``: empty key tiles
              are skipped).
    ``flex``  FlexAttention with a block-sparse ``BlockMask``; compiled on CUDA (skips empty tiles).
    ``te``    Transformer Engine fused attention with an arbitrary mask (when TE is installed).
    ``auto``  flex on CUDA, sdpa elsewhere.
All backends compute the same function; tests compare them with a float64 reference.

KV cache (decoding): when ``decode_cache`` is set, the keys / values of this call are appended to
the cached ones of earlier committed blocks (see ``megatron_dllm.generate.kv_cache``) and the mask
is ``[b, sq, cached + sq]``.

Context parallelism (``context_parallel_size`` > 1, ``model/context_parallel.py``): the query rows
are this rank's rows of the input (``cp_split``, set per forward by ``DiffusionGPTModel``); keys and
values are all-gathered over the CP group into input order, so the mask is ``[.., rows, S]``: this
rank's rows of the one-rank mask. An explicit mask is required (also for causal layers).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from megatron_dllm.model import sparse_sdpa
from megatron_dllm.model.context_parallel import gather_keys

BACKENDS = ("auto", "sdpa", "flex", "te")


def resolve_backend(backend: str, device_type: str) -> str:
    """Pick the concrete backend for ``auto`` on a device type ('cpu' or 'cuda')."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "flex" if device_type == "cuda" else "sdpa"
    return backend


def te_available() -> bool:
    """True when Transformer Engine's PyTorch extension imports."""
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


@functools.lru_cache(maxsize=None)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_attention(q, k, v, block_mask, scale, enable_gqa):
    from torch.nn.attention.flex_attention import flex_attention

    fn = _compiled_flex_attention() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa)


def _dense_mask_4d(mask: torch.Tensor) -> torch.Tensor:
    """Bring a bool mask to the [b or 1, 1, sq, sk] layout SDPA broadcasts over heads."""
    if mask.dtype != torch.bool:
        raise TypeError(f"attention_mask must be a bool tensor (True = may attend), got {mask.dtype}")
    if mask.dim() == 2:
        return mask[None, None]
    if mask.dim() == 3:
        return mask[:, None]
    if mask.dim() == 4:
        return mask
    raise ValueError(f"attention_mask must be [sq, sk], [b, sq, sk] or [b, 1, sq, sk]; got {tuple(mask.shape)}")


class DiffusionCoreAttention(MegatronModule):
    """Attention of a dLLM layer over ``[s, b, heads, head_dim]`` inputs with an explicit mask.

    Inputs follow Megatron's layout: query ``[sq, b, np, hn]``, key/value ``[sk, b, ng, hn]``
    (grouped-query attention when ng < np); output ``[sq, b, np * hn]``.
    """

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
        backend: str = "auto",
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1 and backend == "te":
            raise ValueError("attention backend 'te' under context parallelism: TE's CP assumes a causal or "
                             "full mask; choose --dllm-attention-backend sdpa|flex|auto")
        self.cp_group = getattr(pg_collection, "cp", None) if pg_collection is not None else None
        # Set by DiffusionGPTModel.forward under context parallelism (this step's ContextParallelSplit).
        self.cp_split = None
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.requested_backend = backend
        resolve_backend(backend, "cpu")  # validates the name early
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self._te_attention = None
        # Set by megatron_dllm.generate for KV-cached decoding (keys of committed blocks), else None.
        self.decode_cache = None
        if backend == "te":
            self._te_attention = self._build_te(config, layer_number, attention_type, pg_collection)

    def _build_te(self, config, layer_number, attention_type, pg_collection):
        if not te_available():
            raise RuntimeError(
                "attention backend 'te' needs Transformer Engine: install megatron_dllm[gpu] "
                "or choose --dllm-attention-backend sdpa|flex"
            )
        from megatron.core.extensions.transformer_engine import TEDotProductAttention

        mask_type = AttnMaskType.causal if self.attn_mask_type == AttnMaskType.causal else AttnMaskType.arbitrary
        return TEDotProductAttention(
            config=config,
            layer_number=layer_number,
            attn_mask_type=mask_type,
            attention_type=attention_type,
            softmax_scale=self.softmax_scale,
            pg_collection=pg_collection,
        )

    def _gather_context(self, key, value, causal: bool):
        if causal:
            raise ValueError("context parallelism needs an explicit attention mask (this rank's rows x all keys), "
                             "also for a causal layer")
        if self.decode_cache is not None:
            raise ValueError("KV-cached decoding does not support context parallelism: decode with CP 1")
        if self.cp_split is None:
            raise ValueError("context parallelism: no CP split set; call the model with cp_split= "
                             "(megatron_dllm.model.context_parallel.ContextParallelSplit)")
        if self.cp_group is None:
            from megatron.core import parallel_state

            self.cp_group = parallel_state.get_context_parallel_group()
        return gather_keys(key, self.cp_split, self.cp_group), gather_keys(value, self.cp_split, self.cp_group)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask,
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("DiffusionCoreAttention takes neither attention_bias nor packed_seq_params")
        causal = attention_mask is None
        if causal and self.attn_mask_type != AttnMaskType.causal:
            raise ValueError(
                "attention_mask is None but this layer is not causal: a dLLM layer needs an explicit "
                "mask (megatron_dllm.diffusion.masks); refusing to fall back to a causal mask"
            )
        if self.config.context_parallel_size > 1:
            key, value = self._gather_context(key, value, causal)
        if self.decode_cache is not None:
            key, value = self.decode_cache.extend(self.layer_number, key, value)
        backend = resolve_backend(self.requested_backend, query.device.type)
        sq, b, np_, hn = query.shape
        if backend == "te":
            te_mask = None if causal else ~_dense_mask_4d(attention_mask)
            return self._te_attention(query, key, value, te_mask, attn_mask_type=None)
        # [s, b, h, d] -> [b, h, s, d]
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        gqa = k.shape[1] != q.shape[1]
        dropout = self.dropout_p if self.training else 0.0
        if backend == "flex":
            if causal or isinstance(attention_mask, torch.Tensor):
                raise ValueError(
                    "the flex backend needs a FlexAttention BlockMask "
                    "(megatron_dllm.diffusion.masks.flex_block_mask); got "
                    + ("None" if causal else "a dense tensor")
                )
            if dropout:
                raise ValueError("the flex backend does not support attention dropout")
            out = _flex_attention(q, k, v, attention_mask, self.softmax_scale, gqa)
        else:
            if causal:
                mask = None
            elif isinstance(attention_mask, torch.Tensor):
                mask = _dense_mask_4d(attention_mask)
            else:
                raise ValueError(
                    "the sdpa backend needs a dense bool mask; a BlockMask needs --dllm-attention-backend flex"
                )
            # Grouped-query attention without expanding K / V to every query head (SDPA's enable_gqa):
            # the same outputs, K / V gradients equal to float32 rounding, 1 / (heads per group) of the
            # K / V memory (under context parallelism K / V are the whole sequence's).
            # Dropout inside the TP region draws from the model-parallel RNG stream, as Megatron does.
            rng = (
                tensor_parallel.get_cuda_rng_tracker().fork()
                if dropout and not self.config.sequence_parallel
                else contextlib.nullcontext()
            )
            if mask is not None and not dropout and sparse_sdpa.usable(mask, q, k):
                out = sparse_sdpa.sparse_sdpa(q, k, v, mask, self.softmax_scale, gqa)  # CPU, skips empty tiles
            else:
                with rng:
                    out = F.scaled_dot_product_attention(
                        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                        scale=self.softmax_scale, enable_gqa=gqa,
                    )
        # [b, h, s, d] -> [s, b, h * d]
        return out.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)
