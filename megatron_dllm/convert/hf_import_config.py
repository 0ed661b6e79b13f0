"""Our ModelConfig from an HF ``config.json`` (import side of ``hf_keymap.hf_config``); no torch needed.

Families (``model_type`` / ``architectures``):

* ``llada2_moe`` / ``LLaDA2MoeModelLM``: LLaDA2.0 / 2.1 dLLMs and our own exports (objective mdlm,
  ``mask_token_id`` read from the config).
* ``bailing_moe`` / ``BailingMoeV2ForCausalLM``: Ling-mini / flash-2.0 AR models. Their last
  ``num_nextn_predict_layers`` of ``num_hidden_layers`` are multi-token-prediction layers (as in the
  released ``modeling_bailing_moe_v2.py``); they are dropped with a warning.
* ``llada`` / ``LLaDAMoEModelLM``: LLaDA-MoE (softmax router, other names and keys: ``hf_lladamoe``).

The first two share the tensor names of ``hf_keymap`` and the keys below. Every key is either *mapped* onto a
ModelConfig field, *checked* (accepted only with the value our model computes; anything else is
refused with a one-line error), or *ignored* (runtime / serving options that do not change the
function). Keys outside these lists are reported in a warning. See README "Importing HF checkpoints".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from megatron_dllm.config import ModelConfig
from megatron_dllm.convert.errors import ConversionError

LLADA2 = "llada2_moe"
BAILING = "bailing_moe"
LLADA_MOE = "llada"
# model_type -> (family, accepted architectures)
FAMILIES = {
    "llada2_moe": (LLADA2, ("LLaDA2MoeModelLM",)),
    "bailing_moe": (BAILING, ("BailingMoeV2ForCausalLM",)),
    "bailing_moe_v2": (BAILING, ("BailingMoeV2ForCausalLM",)),
    "llada": (LLADA_MOE, ("LLaDAMoEModelLM",)),
}
SUPPORTED = "llada2_moe (LLaDA2MoeModelLM), bailing_moe (BailingMoeV2ForCausalLM), llada (LLaDAMoEModelLM)"

MAPPED = {
    "num_hidden_layers": "num_layers (minus num_nextn_predict_layers)",
    "hidden_size": "hidden_size",
    "intermediate_size": "ffn_hidden_size",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_query_groups",
    "head_dim": "kv_channels",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings (and seq_length = min(it, 4096))",
    "rms_norm_eps": "norm_epsilon",
    "use_qk_norm": "qk_layernorm",
    "rope_theta": "rotary_base",
    "rope_parameters": "checked: default RoPE, same rope_theta / partial_rotary_factor",
    "partial_rotary_factor": "rotary_percent",
    "tie_word_embeddings": "untie_embeddings_and_output_weights (negated)",
    "initializer_range": "init_method_std",
    "attention_dropout": "attention_dropout",
    "num_experts": "num_experts",
    "moe_intermediate_size": "moe_ffn_hidden_size",
    "first_k_dense_replace": "moe_first_k_dense",
    "num_experts_per_tok": "moe_router_topk",
    "n_group": "moe_router_num_groups",
    "topk_group": "moe_router_group_topk",
    "routed_scaling_factor": "moe_router_topk_scaling_factor",
    "num_shared_experts": "moe_shared_expert_intermediate_size (x moe_intermediate_size)",
    "moe_shared_expert_intermediate_size": "moe_shared_expert_intermediate_size",
    "moe_router_enable_expert_bias": "moe_router_enable_expert_bias (llada2_moe; bailing_moe always has one)",
    "router_dtype": "moe_router_dtype",
    "num_nextn_predict_layers": "MTP layers: dropped with a warning",
    "mask_token_id": "the dLLM mask token (llada2_moe)",
}
# key -> values our model computes (anything else is refused)
CHECKED = {
    "hidden_act": ("silu",),
    "use_qkv_bias": (False,),
    "use_bias": (False,),
    "use_rmsnorm": (True,),
    "norm_head": (False,),
    "norm_softmax": (False,),
    "rope_scaling": (None,),
    "use_sliding_window": (False,),
    "score_function": ("sigmoid",),
    "scoring_func": ("sigmoid",),
    "using_split_qkv_in_self_attention": (False,),
    "embedding_dropout": (0.0,),
    "output_dropout": (0.0,),
}
IGNORED = frozenset((
    "architectures", "model_type", "auto_map", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "pad_token_id", "eos_token_id", "bos_token_id", "output_router_logits", "max_window_layers",
    "norm_topk_prob", "rotary_dim", "mtp_loss_scaling_factor", "moe_router_topk_method", "topk_method",
    "seq_aux", "aux_loss_alpha", "_name_or_path", "_attn_implementation_autoset",
))


@dataclass
class ImportedConfig:
    """What ``config.json`` says: the family, our ModelConfig, the mask token, MTP layers, warnings."""

    family: str
    model: ModelConfig
    objective: str                      # "mdlm" (LLaDA2) or "ar" (BailingMoeV2)
    mask_token_id: Optional[int]
    mtp_layers: int = 0
    warnings: List[str] = field(default_factory=list)


def family_of(config: dict) -> str:
    """The family of an HF config, or ConversionError naming the supported ones."""
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if model_type not in FAMILIES:
        raise ConversionError(f"config.json model_type {model_type!r} (architectures {archs}) is not supported: "
                              f"import supports {SUPPORTED}")
    family, accepted = FAMILIES[model_type]
    if archs and not any(a in accepted for a in archs):
        raise ConversionError(f"config.json architectures {archs} are not supported for model_type {model_type!r}: "
                              f"import supports {SUPPORTED}")
    return family


def _int(config: dict, key: str, default=None, minimum: int = 1) -> Optional[int]:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConversionError(f"config.json {key} = {value!r}: expected an integer >= {minimum}")
    return value


def _check(config: dict) -> None:
    for key, allowed in CHECKED.items():
        if key in config and config[key] not in allowed:
            raise ConversionError(f"config.json {key} = {config[key]!r} is not supported: the Megatron model "
                                  f"computes {key} = {allowed[0]!r}")


def model_config_from_hf(config: dict) -> ImportedConfig:
    """Derive the Megatron model of an HF config (no preset needed); ConversionError when it cannot."""
    family = family_of(config)
    if family == LLADA_MOE:
        return _llada_moe(config)
    _check(config)
    warnings = []
    total_layers = _int(config, "num_hidden_layers")
    mtp = _int(config, "num_nextn_predict_layers", 0, minimum=0) or 0
    if family == LLADA2 and mtp:
        raise ConversionError("config.json num_nextn_predict_layers is set in an llada2_moe config: LLaDA2 has "
                              "no MTP layers; import it as model_type bailing_moe if it is a Ling model")
    layers = total_layers - mtp
    if layers < 1:
        raise ConversionError(f"config.json has {total_layers} layers of which {mtp} are MTP layers: no decoder")
    if mtp:
        names = f"model.layers.{layers}" + (f"..{total_layers - 1}" if mtp > 1 else "")
        warnings.append(f"dropping {mtp} multi-token-prediction layer(s) ({names}): "
                        "Megatron-Core MTP is not imported; the decoder's outputs are unchanged")
    hidden, heads = _int(config, "hidden_size"), _int(config, "num_attention_heads")
    theta = config.get("rope_theta", 10000.0)
    if not isinstance(theta, (int, float)) or theta <= 0 or float(theta) != math.floor(theta):
        raise ConversionError(f"config.json rope_theta = {theta!r}: Megatron's rotary base is a positive integer")
    rotary = float(config.get("partial_rotary_factor", 1.0) or 1.0)
    head_dim = _int(config, "head_dim") or hidden // heads
    if "rotary_dim" in config and config["rotary_dim"] not in (None, int(head_dim * rotary)):
        raise ConversionError(f"config.json rotary_dim {config['rotary_dim']} disagrees with head_dim {head_dim} x "
                              f"partial_rotary_factor {rotary}")
    params = config.get("rope_parameters")  # transformers 5 writes the RoPE keys here too
    if params is not None:
        if not isinstance(params, dict) or params.get("rope_type", "default") != "default" \
                or float(params.get("rope_theta", theta)) != float(theta) \
                or float(params.get("partial_rotary_factor", rotary) or 1.0) != rotary:
            raise ConversionError(f"config.json rope_parameters {params!r}: only default RoPE with the config's "
                                  "rope_theta and partial_rotary_factor is supported")
    vocab = _int(config, "vocab_size")
    max_pos = _int(config, "max_position_embeddings", 4096)
    fields = dict(
        num_layers=layers, hidden_size=hidden, ffn_hidden_size=_int(config, "intermediate_size"),
        num_attention_heads=heads, num_query_groups=_int(config, "num_key_value_heads") or heads,
        kv_channels=head_dim, seq_length=min(max_pos, 4096), max_position_embeddings=max_pos,
        vocab_size=vocab, make_vocab_size_divisible_by=math.gcd(vocab, 128),
        normalization="RMSNorm", norm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
        qk_layernorm=bool(config.get("use_qk_norm", True)), rotary_percent=rotary, rotary_base=int(theta),
        swiglu=True, add_bias_linear=False,
        untie_embeddings_and_output_weights=not bool(config.get("tie_word_embeddings", False)),
        init_method_std=float(config.get("initializer_range", 0.02)),
        attention_dropout=float(config.get("attention_dropout", 0.0) or 0.0),
    )
    experts = _int(config, "num_experts", minimum=0)
    if experts:
        fields.update(_moe_fields(config, experts, layers, warnings))
        if family == BAILING:  # the released BailingMoeV2 gate adds its expert_bias whatever the flag says
            fields["moe_router_enable_expert_bias"] = True
    unknown = sorted(k for k in config if k not in MAPPED and k not in CHECKED and k not in IGNORED)
    if unknown:
        warnings.append(f"config.json keys not read: {', '.join(unknown)}")
    mask = config.get("mask_token_id")
    if mask is not None and (isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask < vocab):
        raise ConversionError(f"config.json mask_token_id = {mask!r} is outside the vocabulary [0, {vocab})")
    return ImportedConfig(family=family, model=ModelConfig(**fields),
                          objective="mdlm" if family == LLADA2 else "ar",
                          mask_token_id=mask if family == LLADA2 else None, mtp_layers=mtp, warnings=warnings)


def _moe_fields(config: dict, experts: int, layers: int, warnings: List[str]) -> dict:
    moe_ffn = _int(config, "moe_intermediate_size")
    topk = _int(config, "num_experts_per_tok")
    groups = _int(config, "n_group", 1) or 1
    group_topk = _int(config, "topk_group", 1) or 1
    shared = config.get("moe_shared_expert_intermediate_size")
    if shared is None:
        shared = (_int(config, "num_shared_experts", 0, minimum=0) or 0) * moe_ffn
    elif not isinstance(shared, int) or shared < 0:
        raise ConversionError(f"config.json moe_shared_expert_intermediate_size = {shared!r}: expected an integer")
    router_dtype = config.get("router_dtype", "fp32") or "fp32"
    if router_dtype not in ("fp32", "fp64"):
        raise ConversionError(f"config.json router_dtype = {router_dtype!r}: Megatron's router runs in fp32 or fp64")
    first_dense = _int(config, "first_k_dense_replace", 0, minimum=0) or 0
    if first_dense >= layers:
        raise ConversionError(f"config.json first_k_dense_replace {first_dense} leaves no MoE layer of {layers}")
    return dict(
        num_experts=experts, moe_ffn_hidden_size=moe_ffn, moe_first_k_dense=first_dense, moe_router_topk=topk,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=bool(config.get("moe_router_enable_expert_bias", True)),
        moe_router_topk_scaling_factor=float(config.get("routed_scaling_factor", 1.0) or 1.0),
        moe_router_num_groups=groups if groups > 1 else None,
        moe_router_group_topk=group_topk if groups > 1 else None,
        moe_router_dtype=router_dtype, moe_router_load_balancing_type="none",
        moe_shared_expert_intermediate_size=shared or None,
    )


def _llada_moe(config: dict) -> ImportedConfig:
    """LLaDA-MoE (softmax router): its own keys, in ``hf_lladamoe``."""
    from megatron_dllm.convert import hf_lladamoe as family

    warnings: List[str] = []
    fields = family.model_fields(config, warnings)
    vocab = fields["vocab_size"]
    fields["make_vocab_size_divisible_by"] = math.gcd(vocab, 128)
    known = set(family.MAPPED) | set(family.CHECKED) | set(family.IGNORED)
    unknown = sorted(k for k in config if k not in known)
    if unknown:
        warnings.append(f"config.json keys not read: {', '.join(unknown)}")
    mask = config.get("mask_token_id")
    if mask is not None and (isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask < vocab):
        raise ConversionError(f"config.json mask_token_id = {mask!r} is outside the vocabulary [0, {vocab})")
    return ImportedConfig(family=LLADA_MOE, model=ModelConfig(**fields), objective="mdlm", mask_token_id=mask,
                          warnings=warnings)
