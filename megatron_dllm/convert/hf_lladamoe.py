"""LLaDA-MoE (``model_type: llada``, ``LLaDAMoEModelLM``, e.g. LLaDA-MoE-7B-A1B) for the HF import.

The released ``modeling_lladamoe.py`` (OLMoE-derived) computes: pre-norm blocks with RMSNorm;
separate ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``; per-head RMSNorm on q and k
(``q_norm`` / ``k_norm`` over ``head_dim``, before RoPE) when ``qk_layernorm``; rotate-half RoPE on the
first ``partial_rotary_factor`` of each head; attention that is always bidirectional (it drops any
mask); a softmax router over all experts whose top-k probabilities are used as they are
(``norm_topk_prob`` is hard-coded False, ``routed_scaling_factor`` and the group keys are not read);
optional shared expert ``model.layers.N.shared_expert`` added unweighted; dense layers where
``moe_layer_freq[N] == 0``. In Megatron terms: ``moe_router_pre_softmax`` with no scaling, no groups,
no expert bias (Megatron has none for softmax routers: refused).

Tensors (layer N, expert E) -> our keys::

    model.embed_tokens.weight                        embedding.word_embeddings.weight
    model.layers.N.self_attn.{q,k,v}_proj.weight     ...self_attention.linear_qkv.weight (row blocks per group)
    model.layers.N.self_attn.o_proj.weight           ...self_attention.linear_proj.weight
    model.layers.N.self_attn.{q,k}_norm.weight       ...self_attention.{q,k}_layernorm.weight
    model.layers.N.mlp.gate.weight                   ...mlp.router.weight
    model.layers.N.mlp.experts.E.*_proj.weight       ...mlp.experts.experts.linear_fc1 / fc2 [E]
    model.layers.N.shared_expert.*_proj.weight       ...mlp.shared_experts.linear_fc1 / fc2
    model.layers.N.mlp.{gate,up,down}_proj.weight    ...mlp.linear_fc1 / fc2 (dense layers)
    input_layernorm / post_attention_layernorm, model.norm, lm_head as in LLaDA2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from megatron_dllm.config import ModelConfig
from megatron_dllm.convert.errors import ConversionError

MODEL_TYPE, ARCHITECTURE = "llada", "LLaDAMoEModelLM"
EMBEDDING = "model.embed_tokens.weight"
MAPPED = ("num_hidden_layers", "hidden_size", "dense_intermediate_size", "expert_intermediate_size",
          "shared_expert_intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
          "max_position_embeddings", "rms_norm_eps", "qk_layernorm", "rope_theta", "partial_rotary_factor",
          "tie_word_embeddings", "initializer_range", "attention_dropout", "num_experts", "num_experts_per_tok",
          "moe_layer_freq", "mask_token_id")
# key -> values the released code computes with (anything else is refused)
CHECKED = {"hidden_act": ("silu",), "attention_bias": (False,), "clip_qkv": (None,), "rope_scaling": (None,),
           "moe_router_score_function": (None, "softmax"), "moe_router_enable_expert_bias": (None, False),
           "routed_scaling_factor": (None, 1, 1.0)}
IGNORED = ("norm_topk_prob", "router_num_group", "router_topk_group", "router_aux_loss_coef", "use_cache",
           "output_router_logits", "pad_token_id", "eos_token_id", "bos_token_id", "torch_dtype", "dtype",
           "transformers_version", "auto_map", "architectures", "model_type", "_name_or_path")


@dataclass(frozen=True)
class Piece:
    """A box of one HF tensor (whole shape ``shape``, starting at ``hf_offsets``) placed in our key."""

    name: str
    shape: Tuple[int, ...]
    source: str
    offsets: Tuple[int, ...]
    sizes: Tuple[int, ...]
    hf_offsets: Tuple[int, ...] = ()
    transform: str = "none"


def _int(config: dict, key: str, minimum: int = 1, default=None) -> Optional[int]:
    value = config.get(key, default)
    if value is None or value == -1:  # the released LLaDAConfig's "unset"
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConversionError(f"config.json {key} = {value!r}: expected an integer >= {minimum}")
    return value


def model_fields(config: dict, warnings: List[str]) -> dict:
    """ModelConfig fields of a LLaDA-MoE config.json; ConversionError for what the model cannot compute."""
    for key, allowed in CHECKED.items():
        if key in config and config[key] not in allowed:
            raise ConversionError(f"config.json {key} = {config[key]!r} is not supported: the released LLaDA-MoE "
                                  f"code computes with {allowed[-1]!r}")
    layers, hidden, heads = _int(config, "num_hidden_layers"), _int(config, "hidden_size"), \
        _int(config, "num_attention_heads")
    if layers is None or hidden is None or heads is None:
        raise ConversionError("config.json needs num_hidden_layers, hidden_size and num_attention_heads")
    theta = config.get("rope_theta")
    if not isinstance(theta, (int, float)) or theta <= 0 or float(theta) != int(theta):
        raise ConversionError(f"config.json rope_theta = {theta!r}: Megatron's rotary base is a positive integer")
    rotary = config.get("partial_rotary_factor", 1.0)
    rotary = 1.0 if rotary in (None, -1) else float(rotary)
    if not 0 < rotary <= 1:
        raise ConversionError(f"config.json partial_rotary_factor = {rotary}: expected a value in (0, 1]")
    experts = _int(config, "num_experts", minimum=0)
    freq = config.get("moe_layer_freq") or [1 if experts else 0] * layers
    if not isinstance(freq, list) or len(freq) != layers or any(v not in (0, 1) for v in freq):
        raise ConversionError(f"config.json moe_layer_freq {freq!r}: expected {layers} entries of 0 / 1")
    dense = _int(config, "dense_intermediate_size")
    if not all(freq) and dense is None:
        raise ConversionError("config.json has dense layers (moe_layer_freq 0) but no dense_intermediate_size")
    for key in ("router_num_group", "router_topk_group"):
        if config.get(key) not in (None, -1, -2, 0, 1):
            warnings.append(f"config.json {key} = {config[key]} is not read by the released LLaDA-MoE code (no "
                            "group-limited routing): imported without groups")
    vocab = _int(config, "vocab_size")
    max_pos = _int(config, "max_position_embeddings", default=4096)
    fields = dict(
        num_layers=layers, hidden_size=hidden, ffn_hidden_size=dense, num_attention_heads=heads,
        num_query_groups=_int(config, "num_key_value_heads") or heads, kv_channels=hidden // heads,
        seq_length=min(max_pos, 4096), max_position_embeddings=max_pos, vocab_size=vocab,
        normalization="RMSNorm", norm_epsilon=float(config.get("rms_norm_eps", 1e-5)),
        qk_layernorm=bool(config.get("qk_layernorm")), rotary_percent=rotary, rotary_base=int(theta),
        swiglu=True, add_bias_linear=False,
        untie_embeddings_and_output_weights=not bool(config.get("tie_word_embeddings", False)),
        init_method_std=float(config.get("initializer_range", 0.02)),
        attention_dropout=float(config.get("attention_dropout", 0.0) or 0.0))
    if experts and any(freq):
        fields.update(
            num_experts=experts, moe_ffn_hidden_size=_int(config, "expert_intermediate_size"), moe_layer_freq=freq,
            moe_router_topk=_int(config, "num_experts_per_tok"), moe_router_score_function="softmax",
            moe_router_pre_softmax=True, moe_router_enable_expert_bias=False, moe_router_dtype="fp32",
            moe_router_load_balancing_type="aux_loss",
            moe_shared_expert_intermediate_size=_int(config, "shared_expert_intermediate_size"))
    return fields


def _full(name, source, shape) -> Piece:
    shape = tuple(shape)
    return Piece(name, shape, source, (0,) * len(shape), shape)


def _rows(name, source, shape, start, hf_start=0, count=None) -> Piece:
    count = shape[0] if count is None else count
    rest = tuple(shape[1:])
    return Piece(name, tuple(shape), source, (start,) + (0,) * len(rest), (count,) + rest,
                 (hf_start,) + (0,) * len(rest))


def _expert(name, source, shape, expert, start) -> Piece:
    return Piece(name, tuple(shape), source, (expert, start) + (0,) * (len(shape) - 1), (1,) + tuple(shape))


def hf_pieces(cfg: ModelConfig, rows: int) -> List[Piece]:
    """Every HF tensor of the LLaDA-MoE layout of ``cfg`` as pieces of our per-layer keys."""
    h, d, heads, groups = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.query_groups
    per = heads // groups
    out = [_full(EMBEDDING, "embedding.word_embeddings.weight", (rows, h))]
    pattern = cfg.moe_layer_pattern() or [0] * cfg.num_layers
    for n in range(cfg.num_layers):
        ours, hf = f"decoder.layers.{n}.", f"model.layers.{n}."
        qkv = ours + "self_attention.linear_qkv.weight"
        out.append(_full(hf + "input_layernorm.weight", ours + "self_attention.linear_qkv.layer_norm_weight", (h,)))
        for g in range(groups):  # our rows per query group: [q (per heads) | k | v]
            base = g * (per + 2) * d
            out += [_rows(hf + "self_attn.q_proj.weight", qkv, (heads * d, h), base, g * per * d, per * d),
                    _rows(hf + "self_attn.k_proj.weight", qkv, (groups * d, h), base + per * d, g * d, d),
                    _rows(hf + "self_attn.v_proj.weight", qkv, (groups * d, h), base + (per + 1) * d, g * d, d)]
        if cfg.qk_layernorm:
            out += [_full(hf + "self_attn.q_norm.weight", ours + "self_attention.q_layernorm.weight", (d,)),
                    _full(hf + "self_attn.k_norm.weight", ours + "self_attention.k_layernorm.weight", (d,))]
        out += [_full(hf + "self_attn.o_proj.weight", ours + "self_attention.linear_proj.weight", (h, heads * d)),
                _full(hf + "post_attention_layernorm.weight", ours + "mlp.linear_fc1.layer_norm_weight", (h,))]
        if not pattern[n]:
            ffn, fc1 = cfg.ffn_hidden_size, ours + "mlp.linear_fc1.weight"
            out += [_rows(hf + "mlp.gate_proj.weight", fc1, (ffn, h), 0), _rows(hf + "mlp.up_proj.weight", fc1,
                                                                               (ffn, h), ffn),
                    _full(hf + "mlp.down_proj.weight", ours + "mlp.linear_fc2.weight", (h, ffn))]
            continue
        mffn = cfg.moe_ffn_hidden_size
        fc1, fc2 = ours + "mlp.experts.experts.linear_fc1.weight", ours + "mlp.experts.experts.linear_fc2.weight"
        out.append(_full(hf + "mlp.gate.weight", ours + "mlp.router.weight", (cfg.num_experts, h)))
        for e in range(cfg.num_experts):
            pre = f"{hf}mlp.experts.{e}."
            out += [_expert(pre + "gate_proj.weight", fc1, (mffn, h), e, 0),
                    _expert(pre + "up_proj.weight", fc1, (mffn, h), e, mffn),
                    _expert(pre + "down_proj.weight", fc2, (h, mffn), e, 0)]
        shared = cfg.moe_shared_expert_intermediate_size
        if shared:
            sfc1 = ours + "mlp.shared_experts.linear_fc1.weight"
            out += [_rows(hf + "shared_expert.gate_proj.weight", sfc1, (shared, h), 0),
                    _rows(hf + "shared_expert.up_proj.weight", sfc1, (shared, h), shared),
                    _full(hf + "shared_expert.down_proj.weight", ours + "mlp.shared_experts.linear_fc2.weight",
                          (h, shared))]
    out.append(_full("model.norm.weight", "decoder.final_layernorm.weight", (h,)))
    if cfg.untie_embeddings_and_output_weights:
        out.append(_full("lm_head.weight", "output_layer.weight", (rows, h)))
    return out
