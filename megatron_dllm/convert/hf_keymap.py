"""Declarative map from our (Megatron-Core sharded) keys to the LLaDA2.0 HF layout, and its config.

Every HF tensor is a box of one of our global tensors, optionally transformed:

=======================================================  ==================================================
HF name (layer N, expert E)                              our key, box, transform
=======================================================  ==================================================
model.word_embeddings.weight                             embedding.word_embeddings.weight
model.layers.N.input_layernorm.weight                    decoder.layers.N.self_attention.linear_qkv.layer_norm_weight
model.layers.N.attention.query_key_value.weight          ...self_attention.linear_qkv.weight, "qkv" (regroup)
model.layers.N.attention.dense.weight                    ...self_attention.linear_proj.weight
model.layers.N.attention.query_layernorm.weight          ...self_attention.q_layernorm.weight  (key_: k_)
model.layers.N.post_attention_layernorm.weight           ...mlp.linear_fc1.layer_norm_weight (= pre_mlp_layernorm)
model.layers.N.mlp.gate_proj / up_proj .weight           ...mlp.linear_fc1.weight rows [0, F) / [F, 2F)  (dense)
model.layers.N.mlp.down_proj.weight                      ...mlp.linear_fc2.weight
model.layers.N.mlp.gate.weight / gate.expert_bias        ...mlp.router.weight / router.expert_bias (zeros if none)
model.layers.N.mlp.experts.E.gate_proj / up_proj         ...mlp.experts.experts.linear_fc1.weight [E, rows [0,F) / [F,2F)]
model.layers.N.mlp.experts.E.down_proj.weight            ...mlp.experts.experts.linear_fc2.weight [E]
model.layers.N.mlp.shared_experts.{gate,up,down}_proj    ...mlp.shared_experts.linear_fc1 (split) / linear_fc2
model.norm.weight                                        decoder.final_layernorm.weight
lm_head.weight                                           output_layer.weight (absent when tied)
=======================================================  ==================================================

Megatron's ``linear_qkv`` rows are grouped per query group ``[q_g (H/G heads) | k_g | v_g] x G``;
HF's ``query_key_value`` rows are ``[all q | all k | all v]`` (head-major).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from megatron_dllm.config import ModelConfig
from megatron_dllm.convert.errors import ConversionError

HF_ARCHITECTURE = "LLaDA2MoeModelLM"
HF_MODEL_TYPE = "llada2_moe"
AUTO_MAP = {
    "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
    "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
    "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def mcore_qkv_to_hf(weight: torch.Tensor, heads: int, groups: int, head_dim: int) -> torch.Tensor:
    """``[(H + 2G) d, ...]`` grouped ``[q_g | k_g | v_g] x G`` -> ``[all q | all k | all v]``."""
    per_group = heads // groups
    rest = weight.shape[1:]
    w = weight.reshape(groups, per_group + 2, head_dim, *rest)
    q = w[:, :per_group].reshape(heads * head_dim, *rest)
    k = w[:, per_group].reshape(groups * head_dim, *rest)
    v = w[:, per_group + 1].reshape(groups * head_dim, *rest)
    return torch.cat([q, k, v], dim=0)


def hf_qkv_to_mcore(weight: torch.Tensor, heads: int, groups: int, head_dim: int) -> torch.Tensor:
    """Inverse of :func:`mcore_qkv_to_hf`."""
    per_group = heads // groups
    rest = weight.shape[1:]
    q, k, v = weight.split([heads * head_dim, groups * head_dim, groups * head_dim], dim=0)
    q = q.reshape(groups, per_group, head_dim, *rest)
    k = k.reshape(groups, 1, head_dim, *rest)
    v = v.reshape(groups, 1, head_dim, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


@dataclass(frozen=True)
class HFTensor:
    """One HF tensor: ``shape``, made from box ``offsets``/``sizes`` of our ``source`` key."""

    name: str
    shape: Tuple[int, ...]
    source: Optional[str]
    offsets: Tuple[int, ...] = ()
    sizes: Tuple[int, ...] = ()
    transform: str = "none"     # "none", "qkv", or "zeros" (no source)


def _full(name: str, source: str, shape, transform: str = "none") -> HFTensor:
    shape = tuple(shape)
    return HFTensor(name, shape, source, (0,) * len(shape), shape, transform)


def _rows(name: str, source: str, start: int, count: int, rest) -> HFTensor:
    rest = tuple(rest)
    return HFTensor(name, (count,) + rest, source, (start,) + (0,) * len(rest), (count,) + rest)


def _expert(name: str, source: str, expert: int, start: int, count: int, rest) -> HFTensor:
    rest = tuple(rest)
    return HFTensor(name, (count,) + rest, source, (expert, start) + (0,) * len(rest), (1, count) + rest)


def hf_tensors(cfg: ModelConfig, rows: int, has_expert_bias: bool = True) -> List[HFTensor]:
    """Every tensor of the HF export of ``cfg`` (``rows`` = padded vocabulary), in file order."""
    h, d = cfg.hidden_size, cfg.head_dim
    heads, groups = cfg.num_attention_heads, cfg.query_groups
    ffn = cfg.ffn_hidden_size or 4 * h
    pattern = cfg.moe_layer_pattern() or [0] * cfg.num_layers
    out = [_full("model.word_embeddings.weight", "embedding.word_embeddings.weight", (rows, h))]
    for n in range(cfg.num_layers):
        ours, hf = f"decoder.layers.{n}.", f"model.layers.{n}."
        out += [
            _full(hf + "input_layernorm.weight", ours + "self_attention.linear_qkv.layer_norm_weight", (h,)),
            _full(hf + "attention.query_key_value.weight", ours + "self_attention.linear_qkv.weight",
                  ((heads + 2 * groups) * d, h), "qkv"),
        ]
        if cfg.qk_layernorm:
            out += [_full(hf + "attention.query_layernorm.weight", ours + "self_attention.q_layernorm.weight", (d,)),
                    _full(hf + "attention.key_layernorm.weight", ours + "self_attention.k_layernorm.weight", (d,))]
        out += [
            _full(hf + "attention.dense.weight", ours + "self_attention.linear_proj.weight", (h, heads * d)),
            _full(hf + "post_attention_layernorm.weight", ours + "mlp.linear_fc1.layer_norm_weight", (h,)),
        ]
        if not pattern[n]:
            fc1, fc2 = ours + "mlp.linear_fc1.weight", ours + "mlp.linear_fc2.weight"
            out += [_rows(hf + "mlp.gate_proj.weight", fc1, 0, ffn, (h,)),
                    _rows(hf + "mlp.up_proj.weight", fc1, ffn, ffn, (h,)),
                    _full(hf + "mlp.down_proj.weight", fc2, (h, ffn))]
            continue
        experts, mffn = cfg.num_experts, cfg.moe_ffn_hidden_size or ffn
        out.append(_full(hf + "mlp.gate.weight", ours + "mlp.router.weight", (experts, h)))
        out.append(_full(hf + "mlp.gate.expert_bias", ours + "mlp.router.expert_bias", (experts,)) if has_expert_bias
                   else HFTensor(hf + "mlp.gate.expert_bias", (experts,), None, transform="zeros"))
        fc1, fc2 = ours + "mlp.experts.experts.linear_fc1.weight", ours + "mlp.experts.experts.linear_fc2.weight"
        for e in range(experts):
            pre = f"{hf}mlp.experts.{e}."
            out += [_expert(pre + "gate_proj.weight", fc1, e, 0, mffn, (h,)),
                    _expert(pre + "up_proj.weight", fc1, e, mffn, mffn, (h,)),
                    _expert(pre + "down_proj.weight", fc2, e, 0, h, (mffn,))]
        shared = cfg.moe_shared_expert_intermediate_size
        if shared:
            sfc1, sfc2 = ours + "mlp.shared_experts.linear_fc1.weight", ours + "mlp.shared_experts.linear_fc2.weight"
            out += [_rows(hf + "mlp.shared_experts.gate_proj.weight", sfc1, 0, shared, (h,)),
                    _rows(hf + "mlp.shared_experts.up_proj.weight", sfc1, shared, shared, (h,)),
                    _full(hf + "mlp.shared_experts.down_proj.weight", sfc2, (h, shared))]
    out.append(_full("model.norm.weight", "decoder.final_layernorm.weight", (h,)))
    if cfg.untie_embeddings_and_output_weights:
        out.append(_full("lm_head.weight", "output_layer.weight", (rows, h)))
    return out


def hf_config(cfg: ModelConfig, rows: int, dtype: torch.dtype, mask_token_id: Optional[int] = None,
              pad_token_id: Optional[int] = None) -> Tuple[dict, List[str]]:
    """(config.json dict, warnings) of the HF export; ConversionError for unsupported models."""
    why = None
    if not cfg.swiglu:
        why = "a SwiGLU FFN"
    elif cfg.normalization != "RMSNorm":
        why = "RMSNorm"
    elif cfg.add_bias_linear:
        why = "linear layers without biases"
    elif cfg.is_moe and cfg.moe_router_score_function != "sigmoid":
        why = "a sigmoid router (softmax-router MoE such as LLaDA-MoE is a different architecture)"
    if why:
        raise ConversionError(f"the LLaDA2MoeModelLM layout needs {why}: this model cannot be exported to it")
    warnings = []
    pattern = cfg.moe_layer_pattern() or [0] * cfg.num_layers
    first_dense = 0
    while first_dense < cfg.num_layers and not pattern[first_dense]:
        first_dense += 1
    if any(not p for p in pattern[first_dense:]):
        raise ConversionError("LLaDA2MoeModelLM puts MoE in every layer after the first_k_dense_replace dense "
                              f"ones; this model's MoE layer pattern is {pattern}")
    ffn = cfg.ffn_hidden_size or 4 * cfg.hidden_size
    config = {
        "architectures": [HF_ARCHITECTURE], "model_type": HF_MODEL_TYPE, "auto_map": dict(AUTO_MAP),
        "vocab_size": rows, "hidden_size": cfg.hidden_size, "intermediate_size": ffn,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.query_groups, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "use_qkv_bias": False, "use_bias": False, "use_rmsnorm": True, "use_qk_norm": bool(cfg.qk_layernorm),
        "rms_norm_eps": cfg.norm_epsilon, "norm_head": False, "norm_softmax": False,
        "tie_word_embeddings": not cfg.untie_embeddings_and_output_weights,
        "embedding_dropout": 0.0, "attention_dropout": 0.0, "output_dropout": 0.0,
        "initializer_range": cfg.init_method_std,
        "max_position_embeddings": cfg.max_position_embeddings or cfg.seq_length,
        "rope_theta": float(cfg.rotary_base), "rope_scaling": None,
        "partial_rotary_factor": cfg.rotary_percent, "rotary_dim": int(cfg.head_dim * cfg.rotary_percent),
        "use_cache": False, "use_sliding_window": False, "max_window_layers": cfg.num_layers,
        "using_split_qkv_in_self_attention": False, "output_router_logits": False,
        "pad_token_id": pad_token_id, "mask_token_id": mask_token_id,
        "torch_dtype": _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", "")),
    }
    if not cfg.qk_layernorm:
        warnings.append("the model has no QK-norm; the released LLaDA2 code always applies it (SGLang reads "
                        "use_qk_norm)")
    if cfg.is_moe:
        mffn = cfg.moe_ffn_hidden_size or ffn
        shared = cfg.moe_shared_expert_intermediate_size or 0
        groups = cfg.moe_router_num_groups or 1
        group_topk = cfg.moe_router_group_topk or 1
        config.update({
            "num_experts": cfg.num_experts, "num_experts_per_tok": cfg.moe_router_topk,
            "moe_intermediate_size": mffn, "first_k_dense_replace": first_dense,
            "n_group": groups, "topk_group": group_topk,
            "routed_scaling_factor": cfg.moe_router_topk_scaling_factor or 1.0,
            "norm_topk_prob": cfg.moe_router_topk > 1, "score_function": "sigmoid",
            "moe_router_enable_expert_bias": True, "router_dtype": cfg.moe_router_dtype or "fp32",
            "num_shared_experts": shared // mffn if shared % mffn == 0 else 1,
        })
        if shared % mffn:
            config["moe_shared_expert_intermediate_size"] = shared
            warnings.append(f"shared expert size {shared} is not a multiple of the expert size {mffn}: written "
                            "as moe_shared_expert_intermediate_size, which the released modeling code ignores")
        if not cfg.moe_router_enable_expert_bias:
            warnings.append("no expert bias in the model: exported as zeros (the LLaDA2 layout always has one)")
    else:
        config.update({"num_experts": None, "first_k_dense_replace": cfg.num_layers, "num_shared_experts": 0,
                       "moe_intermediate_size": ffn, "num_experts_per_tok": 1, "n_group": 1, "topk_group": 1,
                       "routed_scaling_factor": 1.0, "norm_topk_prob": False, "score_function": "sigmoid",
                       "moe_router_enable_expert_bias": False, "router_dtype": "fp32"})
    return config, warnings
