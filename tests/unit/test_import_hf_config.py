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


def test_group_routing_that_differs_from_the_released_code_warns():
    got = model_config_from_hf(dict(hf_config("llada2"), num_experts_per_tok=2, n_group=4, topk_group=2))
    assert any("top 1 experts" in w and "top 2" in w for w in got.warnings)


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
