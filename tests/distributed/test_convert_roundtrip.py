"""AR -> dLLM conversion round trips on CPU, and the HF export of a converted MoE model.

AR checkpoints of a tiny dense and a tiny MoE model are written by 4 gloo ranks under TP=2 x PP=2,
TP=2 x EP=2 and PP=2 x EP=2, in torch_dist (also with per-expert ``singleton_local_shards`` keys) and
in Megatron-LM's legacy format (experts sequential, TE-grouped and GroupedMLP). Each is converted to
TP=1 and to another layout; the converted model, run causally, must give the AR model's logits:
``verify()`` (max |dlogits| <= 1e-5) and, independently of the converter's reader, the logits of the
single-rank reference model built from the same seed. Converted checkpoints are then loaded under
TP=2 / EP=2 by Megatron-Core's own loader.
"""

import os

import pytest

from tests.distributed import convert_workers as W
from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.slow
OTHER_LAYOUT = {  # source name -> (target sizes for the converter, the layout to load it under)
    "dense_tp2pp2": (dict(target_tensor_parallel=2), dict(tensor_model_parallel_size=2)),
    "moe_tp2ep2": (dict(target_expert_parallel=2), dict(expert_model_parallel_size=2)),
    "moe_pp2ep2": (dict(target_tensor_parallel=2), dict(tensor_model_parallel_size=2, sequence_parallel=True)),
}
CASES = [(name, kind, fmt, style) for name, kind, _, formats in W.SOURCES for fmt, style in formats]
IDS = [f"{name}-{fmt}-{style}" for name, _, fmt, style in CASES]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("convert"))
    run_ranks(W.write_sources_worker, 4, args=(root,), timeout=400)
    jobs = []
    for name, kind, fmt, style in CASES:
        src = W.source_dir(root, name, fmt, style)
        jobs.append((src, kind, f"{name}_{fmt}_{style}_tp1", dict(mask_token_id=255)))
        jobs.append((src, kind, f"{name}_{fmt}_{style}_other", dict(mask_token_id=255, **OTHER_LAYOUT[name][0])))
    moe_out = os.path.join(root, "out", "moe_pp2ep2_torch_dist_regular_tp1")
    dense_src = W.source_dir(root, "dense_tp2pp2", "torch", "sequential")
    dense_out = os.path.join(root, "out", "dense_tp2pp2_torch_sequential_tp1")
    previous = os.environ.get("HF_MODULES_CACHE")
    os.environ["HF_MODULES_CACHE"] = os.path.join(root, "hf_modules")  # transformers' remote-code cache
    try:
        result = run_ranks(W.conversion_suite_worker, 1, args=(root, jobs, (moe_out, dense_src, dense_out)),
                           timeout=500)[0]
    finally:
        if previous is None:
            os.environ.pop("HF_MODULES_CACHE")
        else:
            os.environ["HF_MODULES_CACHE"] = previous
    loads = [(os.path.join(root, "out", f"{name}_{fmt}_{style}_other"), kind, OTHER_LAYOUT[name][1])
             for name, kind, fmt, style in CASES]
    loads.append((os.path.join(root, "out", "dense_grown"), "dense", dict(tensor_model_parallel_size=2)))
    result["loads"] = run_ranks(W.load_parallel_worker, 2, args=(loads,), timeout=300)
    result["root"] = root
    return result


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("target", ["tp1", "other"])
def test_round_trip_reproduces_the_ar_model(suite, case, target):
    name, kind, fmt, style = case
    job = suite["jobs"][f"{name}_{fmt}_{style}_{target}"]
    report, summary = job["verify"], job["summary"]
    assert report["ok"], report
    assert report["max_abs_dlogits"] <= 1e-5 and report["kl_mean"] <= 1e-10
    assert report["causal_built"]["max_abs_dlogits"] <= 1e-5  # built causal, no mask
    assert job["vs_reference"] <= 1e-5  # against the reference model itself, not through our reader
    assert report["dllm_logits_finite"] and 0 < report["dllm_masked_ce"] < 10
    assert summary["source_format"] == fmt and summary["source_iteration"] == W.ITERATION
    assert summary["mask_token_id"] == 255 and summary["mask_token"] == "explicit"
    # a torch_dist source in Megatron-Core's own key layout is loaded by Megatron-Core in verify()
    expected_loader = "dist_checkpointing" if (fmt, style) == ("torch_dist", "regular") else "source reader"
    assert report["ar_loader"] == expected_loader


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_converted_checkpoint_loads_under_its_target_layout(suite, case):
    name, _, fmt, style = case
    key = (f"{name}_{fmt}_{style}_other", str(sorted(OTHER_LAYOUT[name][1].items())))
    for rank_result in suite["loads"]:
        assert rank_result[key] <= 1e-5, (key, rank_result[key])


def test_recorded_metadata(suite):
    import json

    meta_file = os.path.join(suite["root"], "out", "moe_tp2ep2_torch_sequential_other", "iter_0000000", "dllm_meta.json")
    meta = json.load(open(meta_file))
    assert meta["iteration"] == 0 and meta["has_optimizer"] is False and meta["label_shift"] is False
    assert meta["mask_token_id"] == 255 and meta["run"]["diffusion"]["mask_token_id"] == 255
    assert meta["run"]["parallel"]["expert_model_parallel_size"] == 2
    conv = meta["conversion"]["source"]
    assert conv["format"] == "torch" and conv["iteration"] == W.ITERATION and conv["config_origin"] == "args"
    assert conv["layout"]["tensor_model_parallel_size"] == 2 and conv["layout"]["expert_model_parallel_size"] == 2
    assert meta["run"]["model"]["num_experts"] == 16 and meta["run"]["model"]["moe_first_k_dense"] == 1


def test_new_mask_token_grows_the_vocabulary(suite):
    extras = suite["extras"]
    summary = extras["grown_summary"]
    assert (summary["mask_token_id"], summary["mask_token"], summary["vocab_size"]) == (256, "grown", 257)
    assert summary["padded_vocab_size"] == 384  # 257 padded to a multiple of 64 x TP 2
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        rows = extras[key]
        assert rows["rows"] == 384 and rows["old_rows_equal"] and rows["padding_rows_zero"]
        assert rows["mask_row_minus_mean"] <= 1e-6
    assert extras["grown_verify"]["ok"] and extras["grown_verify"]["max_abs_dlogits"] <= 1e-5
    for rank_result in suite["loads"]:  # and it loads under TP=2
        assert rank_result[("dense_grown", str([("tensor_model_parallel_size", 2)]))] <= 1e-5


def test_verify_fails_for_another_model(suite):
    report = suite["extras"]["wrong_verify"]
    assert not report["ok"] and report["max_abs_dlogits"] > 1e-3 and report["kl_mean"] > 0


def test_hf_export_logits_equal_megatron(suite):
    extras = suite["extras"]
    compare = extras["compare"]
    for mask in ("bidirectional", "block_causal", "causal"):
        assert compare[mask] <= 1e-4, compare
    assert extras["hf_class"] == "LLaDA2MoeModelLM"
    info = extras["loading_info"]
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert extras["export"]["shards"] > 1 and extras["export"]["warnings"] == []


def test_hf_export_of_a_dense_model_and_bf16_export(suite):
    extras = suite["extras"]
    assert extras["export_dense"]["tensors"] == 1 + 2 * 9 + 2  # embedding, 2 dense layers, norm, lm_head
    assert extras["compare_dense"]["max_abs_dlogits"] <= 1e-4
    # --dtype bf16 rounds the weights but keeps the router's expert bias in fp32, as Megatron does
    assert extras["bf16_dtypes"] == {"model.layers.1.mlp.gate.expert_bias": "torch.float32",
                                     "model.layers.1.mlp.gate.weight": "torch.bfloat16",
                                     "lm_head.weight": "torch.bfloat16"}


def test_hf_tensor_names_and_shapes_follow_llada2(suite):
    extras = suite["extras"]
    cfg, shapes = extras["hf_config"], extras["hf_shapes"]
    h, d, V = cfg["hidden_size"], cfg["head_dim"], cfg["vocab_size"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * d
    ffn, mffn, E = cfg["intermediate_size"], cfg["moe_intermediate_size"], cfg["num_experts"]
    expected = {"model.word_embeddings.weight": (V, h), "model.norm.weight": (h,), "lm_head.weight": (V, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        expected.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                         p + "attention.query_key_value.weight": (qkv, h), p + "attention.dense.weight": (h, h),
                         p + "attention.query_layernorm.weight": (d,), p + "attention.key_layernorm.weight": (d,)})
        if n < cfg["first_k_dense_replace"]:
            expected.update({p + "mlp.gate_proj.weight": (ffn, h), p + "mlp.up_proj.weight": (ffn, h),
                             p + "mlp.down_proj.weight": (h, ffn)})
            continue
        expected.update({p + "mlp.gate.weight": (E, h), p + "mlp.gate.expert_bias": (E,)})
        for e in range(E):
            expected.update({f"{p}mlp.experts.{e}.gate_proj.weight": (mffn, h),
                             f"{p}mlp.experts.{e}.up_proj.weight": (mffn, h),
                             f"{p}mlp.experts.{e}.down_proj.weight": (h, mffn)})
        shared = cfg["num_shared_experts"] * mffn
        expected.update({p + "mlp.shared_experts.gate_proj.weight": (shared, h),
                         p + "mlp.shared_experts.up_proj.weight": (shared, h),
                         p + "mlp.shared_experts.down_proj.weight": (h, shared)})
    assert shapes == expected
    assert (cfg["model_type"], cfg["architectures"]) == ("llada2_moe", ["LLaDA2MoeModelLM"])
    assert (cfg["first_k_dense_replace"], cfg["n_group"], cfg["topk_group"]) == (1, 4, 2)
