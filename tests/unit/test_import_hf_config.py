"""HF config.json -> ModelConfig (hf_import_config) and the one-line errors of tools/import_hf.py."""

import importlib.util
import json
import os

import pytest
import torch

from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.convert.hf_import_config import model_config_from_hf
from tests.distributed.import_workers import LAYERS, MASK_ID, hf_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    spec = importlib.util.spec_from_file_location("import_hf_tool", os.path.join(ROOT, "tools", "import_hf.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llada2_config_maps_onto_the_megatron_model():
    got = model_config_from_hf(hf_config("llada2"))
    m = got.model
    assert (got.family, got.objective, got.mask_token_id, got.mtp_layers, got.warnings) == (
        "llada2_moe", "mdlm", MASK_ID, 0, [])
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups,
            m.kv_channels) == (LAYERS, 32, 48, 4, 2, 8)
    assert (m.vocab_size, m.make_vocab_size_divisible_by, m.max_position_embeddings, m.seq_length) == (256, 128, 64, 64)
    assert (m.rotary_base, m.rotary_percent, m.qk_layernorm, m.norm_epsilon) == (10000, 0.5, True, 1e-6)
    assert m.untie_embeddings_and_output_weights and m.swiglu and m.normalization == "RMSNorm"
    assert (m.num_experts, m.moe_ffn_hidden_size, m.moe_first_k_dense, m.moe_router_topk) == (8, 8, 1, 4)
    assert (m.moe_router_num_groups, m.moe_router_group_topk, m.moe_router_topk_scaling_factor) == (4, 2, 2.5)
    assert (m.moe_router_score_function, m.moe_router_enable_expert_bias, m.moe_shared_expert_intermediate_size) == (
        "sigmoid", True, 8)
    assert m.moe_layer_pattern() == [0, 1, 1, 1]


def test_bailing_config_drops_mtp_layers_and_is_ar():
    got = model_config_from_hf(hf_config("bailing", mtp=2))
    assert (got.family, got.objective, got.mask_token_id, got.mtp_layers) == ("bailing_moe", "ar", None, 2)
    assert got.model.num_layers == LAYERS
    assert any(f"model.layers.{LAYERS}..{LAYERS + 1}" in w for w in got.warnings)


def test_odd_vocabulary_is_not_padded_further():
    got = model_config_from_hf(dict(hf_config("llada2"), vocab_size=250, mask_token_id=3))
    assert got.model.make_vocab_size_divisible_by == 2 and got.model.padded_vocab_size() == 250


def test_dense_model_and_no_groups():
    got = model_config_from_hf(dict(hf_config("bailing"), num_experts=None))
    assert not got.model.is_moe
    got = model_config_from_hf(dict(hf_config("llada2"), n_group=1, topk_group=1))
    assert got.model.moe_router_num_groups is None and got.warnings == []


@pytest.mark.parametrize("topk, groups, kept, experts", [(4, 4, 2, 8), (8, 8, 4, 64), (2, 4, 1, 8), (3, 1, 1, 8),
                                                        (2, 4, 2, 16), (6, 4, 2, 16), (1, 4, 1, 16), (8, 4, 2, 16)])
def test_group_routing_imports_for_any_top_k(topk, groups, kept, experts):
    """The project's router scores a group by its top 2 as the released code does, whatever k // kept is
    (Megatron's stock rule would differ for every row but the first two)."""
    got = model_config_from_hf(dict(hf_config("llada2"), num_experts=experts, num_experts_per_tok=topk,
                                    n_group=groups, topk_group=kept))
    assert got.model.moe_router_topk == topk and got.warnings == []
    assert got.model.moe_router_group_topk == (kept if groups > 1 else None)


def test_unknown_keys_are_reported():
    got = model_config_from_hf(dict(hf_config("llada2"), some_new_switch=True))
    assert got.warnings == ["config.json keys not read: some_new_switch"]


@pytest.mark.parametrize("change, words", [
    (dict(model_type="llama", architectures=["LlamaForCausalLM"]), "llada2_moe (LLaDA2MoeModelLM), bailing_moe"),
    (dict(architectures=["LLaDAMoEModelLM"]), "not supported for model_type 'llada2_moe'"),
    (dict(hidden_act="gelu"), "hidden_act = 'gelu' is not supported"),
    (dict(use_qkv_bias=True), "use_qkv_bias = True"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), "rope_scaling"),
    (dict(score_function="softmax"), "score_function = 'softmax'"),
    (dict(rope_theta=10000.5), "rope_theta"),
    (dict(router_dtype="bf16"), "router_dtype"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(mask_token_id=999), "mask_token_id = 999"),
    (dict(num_nextn_predict_layers=1), "LLaDA2 has no MTP layers"),
    (dict(first_k_dense_replace=LAYERS), "leaves no MoE layer"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0}), "rope_parameters"),
])
def test_refused_configs(change, words):
    with pytest.raises(ConversionError) as info:
        model_config_from_hf(dict(hf_config("llada2"), **change))
    assert words in str(info.value) and "\n" not in str(info.value)


def _hf_dir(tmp_path, family, name=None, **change):
    from safetensors.torch import save_file

    directory = tmp_path / (name or family)
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(dict(hf_config(family), **change)))
    save_file({"model.word_embeddings.weight": torch.zeros(256, 32)}, str(directory / "model.safetensors"))
    return str(directory)


def _one_line_error(capsys, argv):
    assert _tool().main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    llada2 = _hf_dir(tmp_path, "llada2")
    bailing = _hf_dir(tmp_path, "bailing")
    out = str(tmp_path / "out")
    assert "not a directory" in _one_line_error(capsys, ["--hf", str(tmp_path / "nope"), "--save", out])
    (tmp_path / "empty").mkdir()
    assert "no config.json" in _one_line_error(capsys, ["--hf", str(tmp_path / "empty"), "--save", out])
    (tmp_path / "empty" / "config.json").write_text("{not json")
    assert "not valid JSON" in _one_line_error(capsys, ["--hf", str(tmp_path / "empty"), "--save", out])
    unknown = _hf_dir(tmp_path, "bailing", "other", model_type="qwen3_moe")
    assert "import supports llada2_moe" in _one_line_error(capsys, ["--hf", unknown, "--save", out])
    assert "already a dLLM" in _one_line_error(capsys, ["--hf", llada2, "--save", out, "--to-dllm"])
    assert "need --to-dllm" in _one_line_error(capsys, ["--hf", bailing, "--save", out, "--add-mask-token"])
    assert "they need --to-dllm" in _one_line_error(capsys, ["--hf", bailing, "--save", out, "--token-shift"])
    assert "has no tensor model.layers.0.input_layernorm.weight" in _one_line_error(
        capsys, ["--hf", bailing, "--save", out])  # every tensor is checked before anything is written
    assert "TP 3" in _one_line_error(capsys, ["--hf", llada2, "--save", out,
                                               "--target-tensor-model-parallel-size", "3"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "already exists" in _one_line_error(capsys, ["--hf", llada2, "--save", str(tmp_path / "full")])
    assert "overlaps" in _one_line_error(capsys, ["--hf", llada2, "--save", os.path.join(llada2, "sub")])
    no_mask = _hf_dir(tmp_path, "llada2", "no_mask", mask_token_id=None)
    assert "--mask-token-id" in _one_line_error(capsys, ["--hf", no_mask, "--save", out])
    assert not os.path.exists(out)


def _released(model_type, arch, layers, hidden, ffn, heads, moe_ffn):
    """A config.json of the released LLaDA2.0 / Ling-2.0 shape (the values the presets are taken from)."""
    return dict(model_type=model_type, architectures=[arch], vocab_size=157184, hidden_size=hidden,
                intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=4,
                head_dim=128, hidden_act="silu", use_qkv_bias=False, use_bias=False, use_qk_norm=True,
                rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=32768, rope_theta=600000,
                partial_rotary_factor=0.5, rope_scaling=None, num_experts=256, num_shared_experts=1,
                num_experts_per_tok=8, n_group=8, topk_group=4, routed_scaling_factor=2.5,
                moe_intermediate_size=moe_ffn, first_k_dense_replace=1, score_function="sigmoid", moe_router_enable_expert_bias=True,
                router_dtype="fp32", num_nextn_predict_layers=0, pad_token_id=156892, eos_token_id=156892,
                use_cache=True, output_router_logits=False, initializer_range=0.02, torch_dtype="bfloat16",
                norm_topk_prob=True, max_window_layers=layers, mtp_loss_scaling_factor=0)


@pytest.mark.parametrize("preset, model_type, arch, shape", [
    ("llada2.0-mini", "llada2_moe", "LLaDA2MoeModelLM", (20, 2048, 5120, 16, 512)),
    ("llada2.0-mini", "bailing_moe", "BailingMoeV2ForCausalLM", (20, 2048, 5120, 16, 512)),   # Ling-mini-2.0
    ("llada2.0-flash", "llada2_moe", "LLaDA2MoeModelLM", (32, 4096, 9216, 32, 1024)),
    ("llada2.0-flash", "bailing_moe", "BailingMoeV2ForCausalLM", (32, 4096, 9216, 32, 1024)),  # Ling-flash-2.0
])
def test_released_shapes_import_as_the_presets(preset, model_type, arch, shape):
    """Same architecture fields as the preset (so the same parameter counts: 16.26B / 102.9B)."""
    import dataclasses

    from megatron_dllm.checkpoint.state import check_model_config
    from megatron_dllm.model.presets import get_preset

    config = _released(model_type, arch, *shape)
    if model_type == "llada2_moe":
        config["mask_token_id"] = 156895
    got = model_config_from_hf(config)
    check_model_config(dataclasses.asdict(got.model), get_preset(preset), preset)  # raises on any difference
    assert got.warnings == [] and got.model.padded_vocab_size(8) == 157184 + 512


def test_lladamoe_config_maps_onto_a_softmax_router_model():
    from tests.distributed.lladamoe_reference import CONFIG

    got = model_config_from_hf(dict(CONFIG))
    m = got.model
    assert (got.family, got.objective, got.mask_token_id, got.warnings) == ("llada", "mdlm", None, [])
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_query_groups, m.kv_channels) == (3, 32, 48, 2, 8)
    assert (m.num_experts, m.moe_ffn_hidden_size, m.moe_router_topk, m.moe_layer_pattern()) == (8, 8, 2, [0, 1, 1])
    assert (m.moe_router_score_function, m.moe_router_pre_softmax, m.moe_router_enable_expert_bias) == (
        "softmax", True, False)
    assert (m.moe_router_num_groups, m.moe_router_topk_scaling_factor, m.moe_shared_expert_intermediate_size) == (
        None, None, 8)
    assert (m.norm_epsilon, m.rotary_base, m.rotary_percent, m.qk_layernorm) == (1e-5, 50000, 1.0, True)


@pytest.mark.parametrize("change, words", [
    (dict(moe_router_enable_expert_bias=True), "moe_router_enable_expert_bias = True"),
    (dict(moe_router_score_function="sigmoid"), "moe_router_score_function = 'sigmoid'"),
    (dict(routed_scaling_factor=2.5), "routed_scaling_factor = 2.5"),
    (dict(clip_qkv=8.0), "clip_qkv"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(moe_layer_freq=[1, 1]), "moe_layer_freq"),
    (dict(dense_intermediate_size=None), "dense_intermediate_size"),
    (dict(architectures=["LLaDAModelLM"]), "llada (LLaDAMoEModelLM)"),
])
def test_refused_lladamoe_configs(change, words):
    from tests.distributed.lladamoe_reference import CONFIG

    with pytest.raises(ConversionError) as info:
        model_config_from_hf(dict(CONFIG, **change))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_lladamoe_group_keys_are_not_read_by_the_released_code():
    from tests.distributed.lladamoe_reference import CONFIG

    got = model_config_from_hf(dict(CONFIG, router_num_group=4, router_topk_group=2))
    assert got.model.moe_router_num_groups is None and len(got.warnings) == 2
