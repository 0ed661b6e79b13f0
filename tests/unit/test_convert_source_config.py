"""Model configuration from Megatron-LM's saved args; refusal of features our model cannot represent."""

import argparse
import dataclasses

import pytest

from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.convert.source_config import canonical_layer_freq, layout_from_args, model_config_from_args
from megatron_dllm.model.presets import get_preset


def _ling_mini_args(**overrides):
    # the Ling-2.0 / LLaDA2.0-mini Megatron-LM flags of METHOD.md section 8.1, as args attributes
    ns = argparse.Namespace(
        num_layers=20, hidden_size=2048, ffn_hidden_size=5120, num_attention_heads=16, group_query_attention=True,
        num_query_groups=4, kv_channels=128, seq_length=4096, max_position_embeddings=32768,
        padded_vocab_size=157184, vocab_size=157184, make_vocab_size_divisible_by=128, normalization="RMSNorm",
        norm_epsilon=1e-6, qk_layernorm=True, position_embedding_type="rope", rotary_percent=0.5,
        rotary_base=600000, swiglu=True, add_bias_linear=False, untie_embeddings_and_output_weights=True,
        num_experts=256, moe_ffn_hidden_size=512, moe_layer_freq=[0] + [1] * 19, moe_router_topk=8,
        moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
        moe_router_topk_scaling_factor=2.5, moe_router_num_groups=8, moe_router_group_topk=4,
        moe_router_dtype="fp32", moe_router_load_balancing_type="none", moe_z_loss_coeff=3.5e-6,
        moe_shared_expert_intermediate_size=512, tensor_model_parallel_size=2, pipeline_model_parallel_size=4,
        expert_model_parallel_size=8, rotary_interleaved=False)
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns


def test_ling_mini_args_give_the_llada2_mini_architecture():
    cfg = model_config_from_args(_ling_mini_args(), "ckpt")
    preset = get_preset("llada2.0-mini")
    ignore = {"seq_length", "init_method_std", "hidden_dropout", "attention_dropout", "moe_token_dispatcher_type",
              "moe_router_bias_update_rate", "moe_aux_loss_coeff"}
    diffs = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(preset, f.name)} - ignore
    assert diffs == set()
    lay = layout_from_args(_ling_mini_args())
    assert (lay.tensor_model_parallel_size, lay.pipeline_model_parallel_size, lay.expert_model_parallel_size) == (2, 4, 8)


def test_unsupported_features_are_refused():
    with pytest.raises(ConversionError, match=r"uses interleaved RoPE \(args.rotary_interleaved=True\)"):
        model_config_from_args(_ling_mini_args(rotary_interleaved=True), "ckpt")
    with pytest.raises(ConversionError, match="uses an uneven pipeline split"):
        model_config_from_args(_ling_mini_args(decoder_first_pipeline_num_layers=3), "ckpt")
    with pytest.raises(ConversionError, match="only rope is supported"):
        model_config_from_args(_ling_mini_args(position_embedding_type="learned_absolute"), "ckpt")
    with pytest.raises(ConversionError, match="expert-tensor-parallel-size 1 != TP 2"):
        layout_from_args(_ling_mini_args(expert_tensor_parallel_size=1))


def test_layer_frequency_canonical_form():
    assert canonical_layer_freq([0, 1, 1, 1], 4) == (1, 1)
    assert canonical_layer_freq([1, 0, 1, 0], 4) == (2, 0)
    assert canonical_layer_freq([1, 1, 0, 1], 4) == ([1, 1, 0, 1], 0)
    assert canonical_layer_freq(1, 4) == (1, 0)
