"""tools/import_hf.py's package function on tiny HF checkpoints written by the tests (no downloads).

LLaDA2MoE (dLLM) and BailingMoeV2 (AR, with an MTP layer) checkpoints in the HF layout are imported
on one gloo rank; the imported model, loaded by Megatron-Core, must give the HF model's logits
(<= 1e-5, fp32); export -> import -> export must give byte-identical files; an import for TP2 / EP2 /
PP2, loaded under that layout on two ranks, must hold the TP1 import's weights; and ``--to-dllm``
must equal import then ``convert_ar_to_dllm``.
"""

import json
import os

import pytest

from tests.distributed import import_workers as W
from tests.distributed.harness import run_ranks


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("import_hf"))
    result = run_ranks(W.import_suite_worker, 1, args=(root,), timeout=300)[0]
    result["layouts"] = run_ranks(W.layouts_worker, 2, args=(root,), timeout=300)
    result["root"] = root
    return result


def test_llada2_import_gives_the_hf_logits(suite):
    report = suite["logits_llada2"]
    for mask in ("bidirectional", "block_causal", "causal"):
        assert report[mask] <= 1e-5, report
    assert report["scale"] > 0.1  # logits of a real model, not zeros
    summary = suite["summaries"]["tp1"]
    assert (summary["family"], summary["objective"], summary["mask_token_id"]) == ("llada2_moe", "mdlm", W.MASK_ID)
    assert summary["source_format"] == "hf_safetensors" and summary["warnings"] == []


def test_bailing_import_is_an_ar_model_with_the_hf_logits(suite):
    report = suite["logits_bailing"]
    assert report["causal"] <= 1e-5, report
    summary = suite["summaries"]["bailing_ar"]
    assert (summary["family"], summary["objective"], summary["mtp_layers_dropped"]) == ("bailing_moe", "ar", 1)
    assert any("multi-token-prediction" in w for w in summary["warnings"])
    meta = suite["to_dllm_meta"]["bailing_ar"]
    assert meta["objective"] == "ar" and meta["mask_token_id"] is None
    assert meta["run"]["model"]["num_layers"] == W.LAYERS
    dropped = meta["conversion"]["dropped_source_tensors"]
    assert dropped and all(name.startswith(f"model.layers.{W.LAYERS}.") for name in dropped)


def test_export_import_export_is_byte_identical(suite):
    assert suite["round_trip_identical"]
    files = suite["round_trip_files"]
    assert "config.json" in files and sum(f.endswith(".safetensors") for f in files) > 1  # sharded
    assert suite["export_equals_original"]  # and the first export holds the HF tensors we started from


@pytest.mark.parametrize("layout", ["tp2", "ep2", "pp2"])
def test_import_for_a_layout_loads_as_the_tp1_import(suite, layout):
    for rank in suite["layouts"]:
        got = rank[layout]
        assert got["keys_equal"] and got["equal"] and got["tensors"] > 10, got
    assert sum(rank[layout]["expert_weights"] for rank in suite["layouts"]) > 0
    meta_layout = suite["summaries"][layout]
    assert meta_layout["tensors"] == suite["summaries"]["tp1"]["tensors"]


def test_to_dllm_equals_import_then_convert(suite):
    assert suite["to_dllm_keys_equal"] and suite["to_dllm_max_diff"] == 0.0
    direct, converted = suite["to_dllm_meta"]["bailing_dllm"], suite["to_dllm_meta"]["bailing_converted"]
    for meta in (direct, converted):
        assert meta["objective"] == "mdlm" and meta["mask_token_id"] == W.VOCAB  # a new token, as the tool adds
    assert direct["run"]["model"] == converted["run"]["model"]
    assert direct["conversion"]["mask_token"]["init_rows"] == [W.VOCAB]
    assert direct["conversion"]["tool"].startswith("megatron_dllm.convert.hf_import")


def test_damaged_weights_fail_in_one_line_and_leave_nothing(suite):
    got = suite["nan_error"]
    assert got["message"] and "model.layers.2.mlp.experts.5.up_proj.weight holds NaN" in got["message"]
    assert "\n" not in got["message"] and got["left"] == []


@pytest.mark.parametrize("name", ["tp1", "bailing_ar", "bailing_dllm", "bailing_token_shift", "lladamoe"])
def test_model_yaml_gives_pretrain_the_checkpoint_model(suite, name):
    """``pretrain --config OUT/model.yaml --load OUT`` passes the architecture check of the loader."""
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.checkpoint.state import check_model_config

    out = os.path.join(suite["root"], "out", name)
    run = parse_args(["--config", os.path.join(out, "model.yaml"), "--mock-data"])
    with open(os.path.join(out, "iter_0000000", "dllm_meta.json")) as handle:
        meta = json.load(handle)
    check_model_config(meta["run"]["model"], run.model, out)
    assert run.diffusion.objective == meta["objective"]
    assert run.diffusion.mask_token_id == meta["mask_token_id"]
    assert run.model.vocab_size == meta["run"]["model"]["vocab_size"]
    assert (run.diffusion.label_shift, run.diffusion.token_shift) == (meta["label_shift"], meta["token_shift"])
    assert meta["token_shift"] == (name == "bailing_token_shift")


def test_dtype_casts_all_weights_but_the_expert_bias(suite):
    assert suite["bf16_dtypes"] == [("expert_bias", "torch.float32"), ("other", "torch.bfloat16")]
    assert 0 < suite["bf16_max_rel"] <= 2 ** -8  # rounded to bf16, nothing else


def test_tied_embeddings_import_without_the_lm_head_copy(suite):
    assert suite["logits_tied"]["causal"] <= 1e-5, suite["logits_tied"]
    summary = suite["summaries"]["tied"]
    assert summary["dropped_source_tensors"] == 1 and any("lm_head.weight" in w for w in summary["warnings"])


def test_lladamoe_import_gives_the_reference_logits(suite):
    got = suite["lladamoe"]
    assert got["max_abs_dlogits"] <= 1e-5 and got["scale"] > 0.1, got
    assert got["summary"]["family"] == "llada" and got["mask_token_id"] == W.MASK_ID
    m = got["model"]
    assert (m["moe_router_score_function"], m["moe_router_pre_softmax"], m["moe_layer_freq"]) == (
        "softmax", True, [0, 1, 1])
    assert (m["num_query_groups"], m["moe_shared_expert_intermediate_size"], m["rotary_percent"]) == (2, 8, 1.0)
