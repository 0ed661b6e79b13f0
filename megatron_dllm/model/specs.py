"""dLLM layer specs, derived from Megatron-Core's stock GPT / MoE specs.

The stock specs are copied, never edited in place (STYLE.md 1). What differs:
  * ``core_attention`` -> :class:`DiffusionCoreAttention` (explicit mask, backend per device);
  * ``attn_mask_type`` -> ``arbitrary`` (dLLM) or ``causal`` (the AR baseline of the same model);
  * Megatron's torch-norm fallback (used without TE / apex) -> :class:`SequenceParallelTorchNorm`,
    which supports sequence parallelism (needed by MoE with TP > 1);
  * the MoE router ``TopKRouter`` -> :class:`ReleasedGroupTopKRouter`, which scores an expert group by
    its top-2 experts as the released LLaDA2 / BailingMoeV2 code does (Megatron: top k // group_topk;
    the two agree for LLaDA2.0's 8 // 4 and differ for ``tiny-moe``'s 2 // 2).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Optional

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.moe.router import TopKRouter
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm

from megatron_dllm.model.core_attention import DiffusionCoreAttention
from megatron_dllm.model.group_router import ReleasedGroupTopKRouter
from megatron_dllm.model.norm import SequenceParallelTorchNorm

_CLASS_REPLACEMENTS = {WrappedTorchNorm: SequenceParallelTorchNorm, TopKRouter: ReleasedGroupTopKRouter}


def _replace_classes(node, mapping):
    """Return ``node`` with every class found in ``mapping`` swapped, walking specs recursively."""
    if isinstance(node, type):
        return mapping.get(node, node)
    if isinstance(node, ModuleSpec):
        node.module = _replace_classes(node.module, mapping)
        node.submodules = _replace_classes(node.submodules, mapping)
        return node
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            setattr(node, f.name, _replace_classes(getattr(node, f.name), mapping))
        return node
    if isinstance(node, list):
        return [_replace_classes(item, mapping) for item in node]
    return node


def _derive_layer(stock: ModuleSpec, *, causal: bool, attention_backend: str) -> ModuleSpec:
    spec = _replace_classes(copy.deepcopy(stock), _CLASS_REPLACEMENTS)
    attention = spec.submodules.self_attention
    attention.params = dict(attention.params or {})
    attention.params["attn_mask_type"] = AttnMaskType.causal if causal else AttnMaskType.arbitrary
    attention.submodules.core_attention = ModuleSpec(
        module=DiffusionCoreAttention, params={"backend": attention_backend}
    )
    return spec


def dllm_block_spec(
    transformer_config,
    *,
    causal: bool = False,
    attention_backend: str = "auto",
    vp_stage: Optional[int] = None,
    pp_rank: Optional[int] = None,
    use_transformer_engine: bool = False,
):
    """Decoder block spec of a dLLM (or, with ``causal=True``, of the same model as an AR LM).

    Built from ``get_gpt_decoder_block_spec``, so dense layers, MoE layers and the first-k-dense
    pattern come from Megatron-Core's own logic: local torch modules, or with
    ``use_transformer_engine`` TE's fused norm + linear layers and, with ``moe_grouped_gemm``,
    ``TEGroupedMLP`` experts. The core-attention slot holds our attention either way (TE's
    ``TEDotProductAttention`` takes no arbitrary dLLM mask); checkpoints of the two paths use the same
    keys (the local spec maps its norm names onto TE's).
    """
    stock = get_gpt_decoder_block_spec(
        transformer_config,
        use_transformer_engine=use_transformer_engine,
        normalization=transformer_config.normalization,
        vp_stage=vp_stage,
        pp_rank=pp_rank,
    )
    block = copy.copy(stock)
    block.layer_specs = [
        _derive_layer(layer, causal=causal, attention_backend=attention_backend)
        for layer in stock.layer_specs
    ]
    block.layer_norm = _CLASS_REPLACEMENTS.get(stock.layer_norm, stock.layer_norm)
    return block
