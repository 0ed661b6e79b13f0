"""Configuration validation: bad input fails before any compute, with a message that names the fix."""

import dataclasses

import pytest

from megatron_dllm.config import ConfigError, ModelConfig, ParallelConfig, validate
from megatron_dllm.model.presets import PRESETS, get_preset


def test_heads_not_divisible_by_tp():
    model = ModelConfig(num_attention_heads=6, num_query_groups=6, hidden_size=96)
    with pytest.raises(ConfigError, match=r"--num-attention-heads 6 is not divisible by --tensor-model-parallel-size 4"):
        validate(model, ParallelConfig(tensor_model_parallel_size=4))


def test_query_groups_not_divisible_by_tp():
    model = ModelConfig(num_attention_heads=8, num_query_groups=2, hidden_size=64)
    with pytest.raises(ConfigError, match=r"--num-query-groups 2 is not divisible"):
        validate(model, ParallelConfig(tensor_model_parallel_size=4))


def test_experts_not_divisible_by_ep():
    model = get_preset("tiny-moe")
    with pytest.raises(ConfigError, match=r"--num-experts 8 is not divisible by --expert-model-parallel-size 3"):
        validate(model, ParallelConfig(expert_model_parallel_size=3))


def test_layers_not_divisible_by_pp():
    model = ModelConfig(num_layers=3)
    with pytest.raises(ConfigError, match=r"--num-layers 3 is not divisible by --pipeline-model-parallel-size 2"):
        validate(model, ParallelConfig(pipeline_model_parallel_size=2))


def test_moe_tp_needs_sequence_parallel():
    with pytest.raises(ConfigError, match="--sequence-parallel"):
        validate(get_preset("tiny-moe"), ParallelConfig(tensor_model_parallel_size=2))
    validate(get_preset("tiny-moe"), ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True))


def test_world_size_must_fit_layout():
    with pytest.raises(ConfigError, match="world size 6 is not divisible by TP x PP x CP = 4"):
        validate(ModelConfig(num_layers=2), ParallelConfig(tensor_model_parallel_size=2,
                 pipeline_model_parallel_size=2), world_size=6)


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'llada3'; choose one of: .*llada2.0-mini"):
        get_preset("llada3")


def test_presets_validate_and_are_copies():
    for name in PRESETS:
        cfg = get_preset(name)
        validate(cfg, ParallelConfig())
        cfg.num_layers += 1
        assert get_preset(name).num_layers == PRESETS[name].num_layers


def test_llada2_mini_architecture_matches_method_table():
    cfg = get_preset("llada2.0-mini")
    assert (cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size) == (20, 2048, 5120)
    assert (cfg.num_attention_heads, cfg.query_groups, cfg.head_dim) == (16, 4, 128)
    assert (cfg.num_experts, cfg.moe_router_topk, cfg.moe_ffn_hidden_size) == (256, 8, 512)
    assert cfg.moe_layer_pattern() == [0] + [1] * 19
    assert (cfg.rotary_percent, cfg.rotary_base) == (0.5, 600000)
    assert cfg.moe_router_score_function == "sigmoid" and cfg.moe_router_enable_expert_bias
    assert (cfg.moe_router_num_groups, cfg.moe_router_group_topk) == (8, 4)
    assert cfg.moe_router_topk_scaling_factor == 2.5
    assert cfg.padded_vocab_size(1) == 157184


def test_padded_vocab_follows_megatron_rule():
    cfg = ModelConfig(vocab_size=1000, make_vocab_size_divisible_by=128)
    assert cfg.padded_vocab_size(1) == 1024
    assert cfg.padded_vocab_size(8) == 1024
    assert cfg.padded_vocab_size(3) == 1152


def test_moe_layer_pattern_first_k_dense():
    cfg = dataclasses.replace(get_preset("tiny-moe"), num_layers=4, moe_first_k_dense=2)
    assert cfg.moe_layer_pattern() == [0, 0, 1, 1]
    assert ModelConfig().moe_layer_pattern() is None
