"""Model presets: the LLaDA2.0 / LLaDA-MoE architectures (METHOD.md section 8) and tiny test models."""

from __future__ import annotations

from megatron_dllm.config import ConfigError, ModelConfig

_LING_VOCAB = 157184  # Ling-2.0 tokenizer; [MASK] 156895, EOS 156892


def _llada2(num_layers, hidden, ffn, heads, moe_ffn) -> ModelConfig:
    return ModelConfig(
        num_layers=num_layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        num_query_groups=4,
        kv_channels=128,
        seq_length=4096,
        max_position_embeddings=32768,
        vocab_size=_LING_VOCAB,
        normalization="RMSNorm",
        norm_epsilon=1e-6,
        qk_layernorm=True,
        rotary_percent=0.5,
        rotary_base=600000,
        swiglu=True,
        add_bias_linear=False,
        untie_embeddings_and_output_weights=True,
        num_experts=256,
        moe_ffn_hidden_size=moe_ffn,
        moe_first_k_dense=1,
        moe_router_topk=8,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        moe_router_topk_scaling_factor=2.5,
        moe_router_num_groups=8,
        moe_router_group_topk=4,
        moe_router_dtype="fp32",
        moe_router_load_balancing_type="none",
        moe_z_loss_coeff=3.5e-6,
        moe_shared_expert_intermediate_size=moe_ffn,
    )


def _llada_moe_7b() -> ModelConfig:
    # Softmax router, top-8 of 64, no renormalisation of the top-k weights (OLMoE style:
    # softmax over all experts before top-k), load-balancing 0.01 + z-loss 0.001, no shared expert.
    # Tied embeddings: with them the architecture gives the published ~7B total / ~1.4B active.
    return ModelConfig(
        num_layers=16,
        hidden_size=2048,
        ffn_hidden_size=8192,
        num_attention_heads=16,
        num_query_groups=16,
        kv_channels=128,
        seq_length=4096,
        max_position_embeddings=8192,
        vocab_size=_LING_VOCAB,
        normalization="RMSNorm",
        norm_epsilon=1e-6,
        qk_layernorm=True,
        rotary_percent=1.0,
        rotary_base=10000,
        swiglu=True,
        add_bias_linear=False,
        untie_embeddings_and_output_weights=False,
        num_experts=64,
        moe_ffn_hidden_size=1024,
        moe_router_topk=8,
        moe_router_score_function="softmax",
        moe_router_pre_softmax=True,
        moe_router_load_balancing_type="aux_loss",
        moe_aux_loss_coeff=0.01,
        moe_z_loss_coeff=0.001,
    )


def _tiny_dense() -> ModelConfig:
    return ModelConfig(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
        num_query_groups=2, kv_channels=16, seq_length=64, vocab_size=256,
        make_vocab_size_divisible_by=64, rotary_percent=0.5, rotary_base=10000,
        norm_epsilon=1e-6, qk_layernorm=True,  # explicit since the defaults follow Megatron-LM (issue 17)
    )


def _tiny_moe() -> ModelConfig:
    return ModelConfig(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
        num_query_groups=2, kv_channels=16, seq_length=64, vocab_size=256,
        make_vocab_size_divisible_by=64, rotary_percent=0.5, rotary_base=10000,
        norm_epsilon=1e-6, qk_layernorm=True,  # explicit since the defaults follow Megatron-LM (issue 17)
        num_experts=8, moe_ffn_hidden_size=32, moe_first_k_dense=0, moe_router_topk=2,
        moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
        moe_router_topk_scaling_factor=2.5, moe_router_num_groups=4, moe_router_group_topk=2,
        moe_router_load_balancing_type="none", moe_shared_expert_intermediate_size=32,
    )


PRESETS = {
    "llada2.0-mini": _llada2(20, 2048, 5120, 16, 512),
    "llada2.0-flash": _llada2(32, 4096, 9216, 32, 1024),
    "llada-moe-7b-a1b": _llada_moe_7b(),
    "tiny-dense": _tiny_dense(),
    "tiny-moe": _tiny_moe(),
}


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of the named preset's ModelConfig; ConfigError lists the names on a typo."""
    key = name.lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    import dataclasses

    return dataclasses.replace(PRESETS[key])
