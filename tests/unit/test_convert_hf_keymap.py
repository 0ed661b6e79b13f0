"""HF LLaDA2.0 layout: qkv regrouping, tensor names / shapes, config.json, unsupported models."""

import dataclasses

import pytest
import torch

from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.convert.hf_keymap import hf_config, hf_qkv_to_mcore, hf_tensors, mcore_qkv_to_hf
from megatron_dllm.model.presets import get_preset


def test_qkv_regrouping_matches_head_indices():
    heads, groups, d, h = 8, 2, 3, 5
    per = heads // groups
    # mcore rows: for group g: q heads g*per .. g*per+per-1, then k_g, then v_g; each head d rows
    tag = {}
    rows = []
    for g in range(groups):
        for j in range(per):
            rows += [("q", g * per + j, r) for r in range(d)]
        rows += [("k", g, r) for r in range(d)] + [("v", g, r) for r in range(d)]
    mcore = torch.stack([torch.full((h,), float(i)) for i in range(len(rows))])
    for i, r in enumerate(rows):
        tag[r] = float(i)
    hf = mcore_qkv_to_hf(mcore, heads, groups, d)
    expected = ([("q", i, r) for i in range(heads) for r in range(d)] + [("k", g, r) for g in range(groups) for r in range(d)]
                + [("v", g, r) for g in range(groups) for r in range(d)])
    assert hf[:, 0].tolist() == [tag[e] for e in expected]
    assert torch.equal(hf_qkv_to_mcore(hf, heads, groups, d), mcore)


def test_llada2_mini_names_and_shapes():
    cfg = get_preset("llada2.0-mini")
    items = {t.name: t for t in hf_tensors(cfg, 157184)}
    assert items["model.word_embeddings.weight"].shape == (157184, 2048)
    assert items["model.layers.0.attention.query_key_value.weight"].shape == ((16 + 2 * 4) * 128, 2048)
    assert items["model.layers.0.mlp.gate_proj.weight"].shape == (5120, 2048)  # first_k_dense_replace = 1
    assert "model.layers.0.mlp.gate.weight" not in items
    assert items["model.layers.1.mlp.gate.weight"].shape == (256, 2048)
    assert items["model.layers.1.mlp.gate.expert_bias"].shape == (256,)
    assert items["model.layers.19.mlp.experts.255.down_proj.weight"].shape == (2048, 512)
    assert items["model.layers.1.mlp.shared_experts.up_proj.weight"].offsets == (512, 0)
    assert items["model.layers.3.mlp.experts.7.up_proj.weight"].offsets == (7, 512, 0)
    assert items["lm_head.weight"].shape == (157184, 2048)
    attention = 6  # input norm, qkv, q norm, k norm, dense, post-attention norm
    per_moe_layer = attention + 2 + 3 * 256 + 3  # + router weight and bias, experts, shared expert
    assert len(items) == 1 + (attention + 3) + 19 * per_moe_layer + 2


def test_llada2_mini_config_json():
    cfg = get_preset("llada2.0-mini")
    config, warnings = hf_config(cfg, 157184, torch.bfloat16, mask_token_id=156895)
    expected = {"model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"], "num_hidden_layers": 20,
                "hidden_size": 2048, "intermediate_size": 5120, "num_attention_heads": 16,
                "num_key_value_heads": 4, "head_dim": 128, "num_experts": 256, "num_experts_per_tok": 8,
                "moe_intermediate_size": 512, "first_k_dense_replace": 1, "num_shared_experts": 1,
                "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
                "score_function": "sigmoid", "moe_router_enable_expert_bias": True, "rope_theta": 600000.0,
                "partial_rotary_factor": 0.5, "rotary_dim": 64, "rms_norm_eps": 1e-6,
                "tie_word_embeddings": False, "vocab_size": 157184, "torch_dtype": "bfloat16",
                "mask_token_id": 156895}
    assert {k: config[k] for k in expected} == expected
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_llada2_moe.LLaDA2MoeModelLM"
    assert warnings == []


def test_unsupported_models_and_warnings():
    with pytest.raises(ConversionError, match="needs a sigmoid router"):
        hf_config(get_preset("llada-moe-7b-a1b"), 157184, torch.float32)
    with pytest.raises(ConversionError, match="needs a SwiGLU FFN"):
        hf_config(dataclasses.replace(get_preset("tiny-dense"), swiglu=False), 256, torch.float32)
    mixed = dataclasses.replace(get_preset("tiny-moe"), num_layers=3, moe_layer_freq=[1, 0, 1])
    with pytest.raises(ConversionError, match="MoE layer pattern is \\[1, 0, 1\\]"):
        hf_config(mixed, 256, torch.float32)
    _, warnings = hf_config(get_preset("tiny-moe"), 256, torch.float32)  # top-2 of 4 groups, 2 kept
    assert not any("routing" in w for w in warnings)  # routed as the released code: nothing to warn
    dense, _ = hf_config(get_preset("tiny-dense"), 256, torch.float32)
    assert dense["num_experts"] is None and dense["first_k_dense_replace"] == 2
