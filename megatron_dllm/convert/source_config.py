"""The model configuration of a source checkpoint, as a :class:`ModelConfig`.

Three places hold it: our own ``dllm_meta.json`` (``run.model``), the ``args`` namespace Megatron-LM
pickles into every checkpoint (legacy ``model_optim_rng.pt`` and torch_dist ``common.pt``), or a YAML
file / preset given by the user for checkpoints that carry none. Megatron-LM's argument names are
our field names; the table below gives Megatron-LM's default for arguments an old checkpoint lacks.
Architecture features our model cannot represent are refused with a one-line error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from megatron_dllm.config import ModelConfig
from megatron_dllm.convert.errors import ConversionError

# ModelConfig field -> Megatron-LM default when the saved args lack it (Megatron-LM arguments.py).
_MEGATRON_DEFAULTS = {
    "num_layers": None, "hidden_size": None, "ffn_hidden_size": None, "num_attention_heads": None,
    "kv_channels": None, "seq_length": None, "max_position_embeddings": None,
    "make_vocab_size_divisible_by": 128, "normalization": "LayerNorm", "norm_epsilon": 1e-5,
    "qk_layernorm": False, "position_embedding_type": "learned_absolute", "rotary_percent": 1.0,
    "rotary_base": 10000, "swiglu": False, "add_bias_linear": True,
    "untie_embeddings_and_output_weights": False, "init_method_std": 0.02, "hidden_dropout": 0.1,
    "attention_dropout": 0.1, "num_experts": None, "moe_ffn_hidden_size": None, "moe_layer_freq": 1,
    "moe_router_topk": 2, "moe_router_score_function": "softmax", "moe_router_enable_expert_bias": False,
    "moe_router_bias_update_rate": 1e-3, "moe_router_topk_scaling_factor": None,
    "moe_router_num_groups": None, "moe_router_group_topk": None, "moe_router_pre_softmax": False,
    "moe_router_dtype": None, "moe_router_load_balancing_type": "aux_loss", "moe_aux_loss_coeff": 0.0,
    "moe_z_loss_coeff": None, "moe_shared_expert_intermediate_size": None,
    "moe_token_dispatcher_type": "allgather", "moe_grouped_gemm": False,
}

# Megatron-LM options that change the weights' meaning in ways our model does not implement:
# (argument, value that is fine, why it is refused).
_UNSUPPORTED = (
    ("rotary_interleaved", False, "interleaved RoPE"),
    ("apply_layernorm_1p", False, "zero-centred (1p) layer norms"),
    ("multi_latent_attention", False, "multi-latent attention"),
    ("moe_shared_expert_gate", False, "a gated shared expert"),
    ("use_rope_scaling", False, "RoPE scaling"),
    ("add_qkv_bias", False, "a QKV-only bias"),
    ("decoder_first_pipeline_num_layers", None, "an uneven pipeline split"),
    ("decoder_last_pipeline_num_layers", None, "an uneven pipeline split"),
    ("pipeline_model_parallel_layout", None, "a custom pipeline layout"),
    ("account_for_embedding_in_pipeline_split", False, "an uneven pipeline split"),
    ("account_for_loss_in_pipeline_split", False, "an uneven pipeline split"),
)


@dataclass
class SourceLayout:
    """Parallel layout the source was saved with (legacy files are named after it)."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None


def canonical_layer_freq(pattern, num_layers: int):
    """(moe_layer_freq, moe_first_k_dense) equivalent to a 0/1 list, in the simplest form."""
    if not isinstance(pattern, (list, tuple)):
        return pattern, 0
    pattern = [int(p) for p in pattern]
    if len(pattern) != num_layers:
        raise ConversionError(f"moe_layer_freq has {len(pattern)} entries for {num_layers} layers")
    k = 0
    while k < num_layers and pattern[k] == 0:
        k += 1
    for freq in range(1, num_layers + 1):
        candidate = [1 if i % freq == 0 else 0 for i in range(num_layers)]
        candidate[:k] = [0] * k
        if candidate == pattern:
            return freq, k
    return pattern, 0


def model_config_from_meta(meta: dict, where: str) -> ModelConfig:
    """ModelConfig recorded by megatron_dllm in ``dllm_meta.json`` (``run.model``)."""
    saved = (meta.get("run") or {}).get("model")
    if not isinstance(saved, dict):
        raise ConversionError(f"{where} has no run.model section: pass --model-config FILE.yaml")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in saved.items() if k in names})


def model_config_from_args(args, where: str) -> ModelConfig:
    """ModelConfig from the Megatron-LM ``args`` namespace saved in a checkpoint."""
    def get(name, default=None):
        value = getattr(args, name, default)
        return default if value is None and default is not None else value

    for name, fine, what in _UNSUPPORTED:
        value = getattr(args, name, fine)
        if value not in (fine, None) and not (fine is None and value in (0, False)):
            raise ConversionError(f"{where} uses {what} (args.{name}={value!r}), which megatron_dllm does not support")
    if get("position_embedding_type", "learned_absolute") != "rope":
        raise ConversionError(
            f"{where} uses position_embedding_type={get('position_embedding_type')!r}: only rope is supported")
    values = {name: get(name, default) for name, default in _MEGATRON_DEFAULTS.items()}
    missing = [n for n in ("num_layers", "hidden_size", "num_attention_heads") if values[n] is None]
    if missing:
        raise ConversionError(f"{where}: saved args lack {', '.join(missing)}: pass --model-config FILE.yaml")
    values["num_query_groups"] = get("num_query_groups") if get("group_query_attention", False) else None
    padded = get("padded_vocab_size")
    vocab = get("vocab_size") or padded
    if vocab is None:
        raise ConversionError(f"{where}: saved args give no vocabulary size: pass --model-config FILE.yaml")
    values["vocab_size"] = int(vocab)
    values["moe_router_dtype"] = values["moe_router_dtype"] or "fp32"
    if values["moe_router_load_balancing_type"] not in ("aux_loss", "seq_aux_loss", "none"):
        values["moe_router_load_balancing_type"] = "none"
    if values["normalization"] not in ("LayerNorm", "RMSNorm"):
        raise ConversionError(f"{where}: normalization {values['normalization']!r} is not supported")
    values["moe_layer_freq"], values["moe_first_k_dense"] = canonical_layer_freq(
        values["moe_layer_freq"], values["num_layers"])
    return ModelConfig(**values)


def layout_from_args(args) -> SourceLayout:
    """Parallel sizes a Megatron-LM run saved its (legacy) checkpoint with."""
    etp = getattr(args, "expert_tensor_parallel_size", None)
    tp = int(getattr(args, "tensor_model_parallel_size", 1) or 1)
    if etp not in (None, tp):
        raise ConversionError(
            f"legacy checkpoints with --expert-tensor-parallel-size {etp} != TP {tp} are not supported: "
            "save the run in torch_dist format (--ckpt-format torch_dist)")
    return SourceLayout(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=int(getattr(args, "pipeline_model_parallel_size", 1) or 1),
        expert_model_parallel_size=int(getattr(args, "expert_model_parallel_size", 1) or 1),
        virtual_pipeline_model_parallel_size=getattr(args, "virtual_pipeline_model_parallel_size", None),
    )
