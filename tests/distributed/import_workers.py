"""Tiny HF checkpoints in the LLaDA2MoE / BailingMoeV2 layouts, and the workers of the import tests.

The HF weights come from our transformers ``LLaDA2MoeModelLM`` (random, seeded): its ``state_dict``
names are the released models' names, written with ``safetensors`` in two shards with an index, and
a ``config.json`` written here as a dict (as the released ones are). A BailingMoeV2 checkpoint holds
the same tensors plus one multi-token-prediction layer (``enorm``, ``hnorm``, ``eh_proj``, ... at
index ``num_hidden_layers - 1``), which the import drops. The HF model is the logits reference.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

LAYERS = 4
SEQ = 16
BATCH = 2
VOCAB = 256
MASK_ID = 250
BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, hidden_act="silu", use_qkv_bias=False, use_bias=False,
            use_qk_norm=True, rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=64,
            rope_theta=10000.0, partial_rotary_factor=0.5, num_experts=8, num_shared_experts=1,
            num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=2.5, moe_intermediate_size=8,
            first_k_dense_replace=1, initializer_range=0.02, pad_token_id=None, torch_dtype="float32")


def hf_config(family: str, mtp: int = 0, tie: bool = False) -> dict:
    """A config.json dict of the tiny model: ``llada2`` (LLaDA2MoeModelLM) or ``bailing`` (BailingMoeV2)."""
    from megatron_dllm.convert.hf_keymap import AUTO_MAP

    config = dict(BASE, tie_word_embeddings=tie)
    if family == "llada2":
        config.update(model_type="llada2_moe", architectures=["LLaDA2MoeModelLM"], auto_map=dict(AUTO_MAP),
                      mask_token_id=MASK_ID, score_function="sigmoid", moe_router_enable_expert_bias=True)
    else:
        config.update(model_type="bailing_moe", architectures=["BailingMoeV2ForCausalLM"],
                      num_hidden_layers=LAYERS + mtp, num_nextn_predict_layers=mtp, mtp_loss_scaling_factor=0.1,
                      moe_router_enable_expert_bias=True, max_window_layers=LAYERS)
    return config


def reference_model(seed: int = 0, tie: bool = False):
    """The HF model (our transformers class) with random weights, norms ~1 and expert biases ~0.05."""
    from megatron_dllm.convert.llada2_hf.configuration_llada2_moe import LLaDA2MoeConfig
    from megatron_dllm.convert.llada2_hf.modeling_llada2_moe import LLaDA2MoeModelLM

    gen = torch.Generator().manual_seed(seed)
    model = LLaDA2MoeModelLM(LLaDA2MoeConfig(**{k: v for k, v in hf_config("llada2", tie=tie).items()
                                                if k not in ("architectures", "auto_map", "torch_dtype")}))
    if tie:
        model.lm_head.weight = model.model.word_embeddings.weight
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.2 * noise if "norm" in name else 0.2 * noise)
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=gen))
    return model.eval()


def write_hf(directory: str, family: str, seed: int = 0, mtp: int = 0, tie: bool = False) -> dict:
    """Write the tiny model in the HF layout of ``family`` (two shards + index); returns its tensors.

    ``tie``: tied embeddings, with the tied ``lm_head.weight`` copy written too (some savers do)."""
    from safetensors.torch import save_file

    os.makedirs(directory)
    tensors = {k: v.clone() for k, v in reference_model(seed, tie).state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    for i in range(mtp):  # BailingMoeV2MTPLayer names; values are never read by the import
        pre = f"model.layers.{LAYERS + i}."
        for name, shape in (("enorm.weight", (32,)), ("hnorm.weight", (32,)), ("eh_proj.weight", (32, 64)),
                            ("final_layernorm.weight", (32,)), ("input_layernorm.weight", (32,)),
                            ("attention.query_key_value.weight", (64, 32)), ("mlp.gate.weight", (8, 32))):
            tensors[pre + name] = torch.randn(shape, generator=gen)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, os.path.join(directory, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle)
    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump(hf_config(family, mtp, tie), handle, indent=2)
    if family == "llada2":
        from megatron_dllm.convert.llada2_hf import DIRECTORY, FILES

        for file in FILES:
            shutil.copyfile(os.path.join(DIRECTORY, file), os.path.join(directory, file))
    return tensors


def tokens(mask: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    if mask:
        ids = torch.where(torch.rand(BATCH, SEQ, generator=gen) < 0.3, torch.full_like(ids, MASK_ID), ids)
    return ids


def masks():
    blocks = torch.arange(SEQ) // 4
    return {"bidirectional": torch.ones(SEQ, SEQ, dtype=torch.bool),
            "block_causal": blocks[:, None] >= blocks[None, :],
            "causal": torch.ones(SEQ, SEQ, dtype=torch.bool).tril()}


def load_megatron(out_dir: str, parallel=None):
    """The imported checkpoint in our (dLLM-built) model under ``parallel``, loaded by Megatron-Core."""
    from megatron.core import dist_checkpointing

    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.convert.readers import read_dllm_checkpoint
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    directory, meta, cfg = read_dllm_checkpoint(out_dir)
    parallel = parallel or ParallelConfig()
    init_model_parallel(parallel, seed=1)
    model = build_model(cfg, parallel, causal=False, attention_backend="sdpa").eval()
    state = dist_checkpointing.load(model.sharded_state_dict(), directory)
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
    return model, meta, cfg


@torch.no_grad()
def logits_vs_hf(out_dir: str, seed: int, mask_names, tie: bool = False) -> dict:
    """max |logits_Megatron - logits_HF| per mask (real vocabulary columns), one rank, fp32."""
    model, meta, _ = load_megatron(out_dir)
    hf = reference_model(seed, tie)
    ids = tokens(mask=meta.get("mask_token_id") is not None)
    positions = torch.arange(SEQ)[None].expand(BATCH, SEQ)
    report = {}
    for name in mask_names:
        mask = masks()[name]
        ref = hf(input_ids=ids, attention_mask=mask[None, None].expand(BATCH, 1, SEQ, SEQ)).logits.float()
        got = model(ids, positions, mask).float()[..., :VOCAB]
        report[name] = (got - ref).abs().max().item()
    report["scale"] = ref.abs().max().item()
    return report


def _import(hf, save, **kwargs):
    from megatron_dllm.convert.hf_import import ImportRequest, prepare_import, run_import

    return run_import(prepare_import(ImportRequest(hf=hf, save=save, **kwargs)), progress=False)


def _files(directory: str) -> dict:
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors") or name in ("config.json", "model.safetensors.index.json"):
            with open(os.path.join(directory, name), "rb") as handle:
                out[name] = handle.read()
    return out


def _dcp_tensors(out_dir: str) -> dict:
    from megatron_dllm.checkpoint.dcp_io import DcpReader
    from megatron_dllm.convert.readers import read_dllm_checkpoint

    directory, _, _ = read_dllm_checkpoint(out_dir)
    reader = DcpReader(directory)
    return {key: reader.read(key) for key in reader.tensors}


def import_suite_worker(rank, world_size, root):
    """One rank: every import, the logits checks, the export round trip and --to-dllm vs convert."""
    from safetensors import safe_open

    from megatron_dllm.convert.convert import ConvertRequest, prepare, run
    from megatron_dllm.convert.hf_export import export_hf

    llada2, bailing = os.path.join(root, "hf_llada2"), os.path.join(root, "hf_bailing")
    original = write_hf(llada2, "llada2", seed=0)
    write_hf(bailing, "bailing", seed=0, mtp=1)
    out = lambda name: os.path.join(root, "out", name)  # noqa: E731
    result = {"summaries": {}}
    for name, kwargs in (("tp1", {}), ("tp2", dict(target_tensor_parallel=2)),
                         ("ep2", dict(target_expert_parallel=2)), ("pp2", dict(target_pipeline_parallel=2))):
        result["summaries"][name] = _import(llada2, out(name), **kwargs)
    result["summaries"]["bailing_ar"] = _import(bailing, out("bailing_ar"))
    result["summaries"]["bailing_dllm"] = _import(bailing, out("bailing_dllm"), to_dllm=True)
    _import(bailing, out("bailing_token_shift"), to_dllm=True, token_shift=True)
    run(prepare(ConvertRequest(load=out("bailing_ar"), save=out("bailing_converted"))), progress=False)
    converted, direct = _dcp_tensors(out("bailing_converted")), _dcp_tensors(out("bailing_dllm"))
    result["to_dllm_keys_equal"] = sorted(converted) == sorted(direct)
    result["to_dllm_max_diff"] = max((converted[k].double() - direct[k].double()).abs().max().item() for k in direct)
    result["to_dllm_meta"] = {name: json.load(open(os.path.join(out(name), "iter_0000000", "dllm_meta.json")))
                              for name in ("bailing_converted", "bailing_dllm", "bailing_ar", "tp1",
                                           "bailing_token_shift")}
    result["logits_llada2"] = logits_vs_hf(out("tp1"), 0, ("bidirectional", "block_causal", "causal"))
    result["logits_bailing"] = logits_vs_hf(out("bailing_ar"), 0, ("causal",))
    write_hf(os.path.join(root, "hf_tied"), "bailing", seed=4, tie=True)
    result["summaries"]["tied"] = _import(os.path.join(root, "hf_tied"), out("tied"))
    result["logits_tied"] = logits_vs_hf(out("tied"), 4, ("causal",), tie=True)
    # export -> import -> export
    export_hf(out("tp1"), os.path.join(root, "e1"), max_shard_bytes=64 << 10, progress=False)
    _import(os.path.join(root, "e1"), out("again"))
    export_hf(out("again"), os.path.join(root, "e2"), max_shard_bytes=64 << 10, progress=False)
    e1, e2 = _files(os.path.join(root, "e1")), _files(os.path.join(root, "e2"))
    result["round_trip_files"] = sorted(e1)
    result["round_trip_identical"] = e1 == e2
    with open(os.path.join(root, "e1", "model.safetensors.index.json")) as handle:
        weight_map = json.load(handle)["weight_map"]
    same = []
    for name, tensor in original.items():
        with safe_open(os.path.join(root, "e1", weight_map[name]), "pt") as handle:
            same.append(torch.equal(handle.get_tensor(name), tensor))
    result["export_equals_original"] = all(same) and len(weight_map) == len(original)
    result["lladamoe"] = _lladamoe_import(root)
    result["nan_error"] = _damaged_import(root)
    _import(llada2, out("bf16"), dtype="bf16")
    bf16 = _dcp_tensors(out("bf16"))
    fp32 = _dcp_tensors(out("tp1"))
    result["bf16_dtypes"] = sorted({(k.rsplit(".", 1)[-1] if "expert_bias" in k else "other", str(v.dtype))
                                    for k, v in bf16.items()})
    result["bf16_max_rel"] = max(((bf16[k].double() - fp32[k].double()).abs().max() /
                                  fp32[k].double().abs().max().clamp_min(1e-30)).item() for k in fp32)
    return result


def _lladamoe_import(root: str) -> dict:
    """LLaDA-MoE (softmax router, split q/k/v, GQA) imported; logits vs the reference forward."""
    from safetensors.torch import save_file

    from tests.distributed import lladamoe_reference as R

    hf = os.path.join(root, "hf_lladamoe")
    os.makedirs(hf)
    weights = R.random_weights(R.CONFIG, seed=5)
    save_file(weights, os.path.join(hf, "model.safetensors"))
    with open(os.path.join(hf, "config.json"), "w") as handle:
        json.dump(R.CONFIG, handle)
    save = os.path.join(root, "out", "lladamoe")
    summary = _import(hf, save, mask_token_id=MASK_ID)
    model, meta, cfg = load_megatron(save)
    ids = tokens(mask=True)
    with torch.no_grad():
        got = model(ids, torch.arange(SEQ)[None].expand(BATCH, SEQ), masks()["bidirectional"]).float()[..., :VOCAB]
    ref = R.logits(R.CONFIG, weights, ids)
    return {"summary": summary, "max_abs_dlogits": (got - ref).abs().max().item(), "scale": ref.abs().max().item(),
            "model": meta["run"]["model"], "mask_token_id": meta["mask_token_id"]}


def _damaged_import(root: str) -> dict:
    """A NaN in one expert: a one-line ConversionError at write time, and no output left behind."""
    from safetensors.torch import load_file, save_file

    from megatron_dllm.convert.errors import ConversionError

    damaged = os.path.join(root, "hf_damaged")
    write_hf(damaged, "llada2", seed=2)
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    with open(os.path.join(damaged, "model.safetensors.index.json")) as handle:
        file = os.path.join(damaged, json.load(handle)["weight_map"][name])
    tensors = load_file(file)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, file)
    save = os.path.join(root, "out", "damaged")
    try:
        _import(damaged, save)
        message = None
    except ConversionError as exc:
        message = str(exc)
    left = [n for n in os.listdir(os.path.join(root, "out")) if n.startswith("damaged")]
    return {"message": message, "left": left}


def layouts_worker(rank, world_size, root):
    """2 ranks: each layout's import and the TP1 import, loaded under that layout, hold equal weights."""
    from megatron_dllm.config import ParallelConfig

    out = {}
    for name, kwargs in (("tp2", dict(tensor_model_parallel_size=2, sequence_parallel=True)),
                         ("ep2", dict(expert_model_parallel_size=2)),
                         ("pp2", dict(pipeline_model_parallel_size=2))):
        parallel = ParallelConfig(**kwargs)
        a, _, _ = load_megatron(os.path.join(root, "out", name), parallel)
        b, _, _ = load_megatron(os.path.join(root, "out", "tp1"), parallel)
        sa, sb = a.state_dict(), b.state_dict()
        tensors = [k for k, v in sa.items() if isinstance(v, torch.Tensor) and "_extra_state" not in k]
        out[name] = {"keys_equal": sorted(sa) == sorted(sb), "tensors": len(tensors),
                     "equal": all(torch.equal(sa[k], sb[k]) for k in tensors),
                     "expert_weights": sum("experts" in k for k in tensors)}
    return out
