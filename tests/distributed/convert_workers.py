"""Workers of the conversion tests: AR checkpoints in several layouts and formats, converted back.

Every AR model is built causal from ``init_seed`` (layout-independent weights, ``model/init.py``) and
then its norms and router expert biases are set from their global keys, so every layout holds the
same global model and the single-rank model of the same config is the reference for all of them.

Sources written (``write_sources_worker``, 4 ranks), as Megatron-LM writes them:
  torch_dist: ``dist_checkpointing.save`` with ``args`` / ``iteration`` in the common state (common.pt);
  legacy:     ``iter_0000007/mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt`` = {model, args, iteration,
              checkpoint_version, rng_state, optimizer} per rank, experts as SequentialMLP
              (``local_experts.N``), TEGroupedMLP (``linear_fc1.weightN``) or GroupedMLP (``weight1/2``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import zlib

import torch

from megatron_dllm.config import ParallelConfig
from megatron_dllm.model.presets import get_preset

SEED = 4321
ITERATION = 7
SEQ = 16
BATCH = 2


def model_config(kind: str):
    """tiny-dense, or a tiny LLaDA2-style MoE: first layer dense, 16 experts in 4 groups, top-4 of 2 groups."""
    if kind == "dense":
        return get_preset("tiny-dense")
    return dataclasses.replace(
        get_preset("tiny-moe"), moe_first_k_dense=1, num_experts=16, moe_ffn_hidden_size=16,
        moe_router_topk=4, moe_router_num_groups=4, moe_router_group_topk=2,
        moe_shared_expert_intermediate_size=16)


def tokens(vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(11))


def _perturb(model) -> None:
    """Norm weights ~ 1 + 0.2 N(0,1) and expert biases ~ 0.05 N(0,1), from their global keys."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    sharded = model.sharded_state_dict()
    apply_factories(sharded)
    for sh in nested_values(sharded):
        if not isinstance(sh, ShardedTensor):
            continue
        is_norm = "layernorm" in sh.key or "layer_norm" in sh.key
        if not (is_norm or sh.key.endswith("expert_bias")):
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(sh.key.encode()))
        full = torch.randn(sh.global_shape, generator=gen)
        full = 1 + 0.2 * full if is_norm else 0.05 * full
        box = tuple(slice(o, o + s) for o, s in zip(sh.global_offset, (1,) * sh.prepend_axis_num + tuple(sh.local_shape)))
        with torch.no_grad():
            sh.data.copy_(full[box].view(sh.data.shape))


def build_ar(kind: str, parallel: ParallelConfig):
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    init_model_parallel(parallel, seed=SEED)
    model = build_model(model_config(kind), parallel, causal=True, attention_backend="sdpa", init_seed=SEED)
    _perturb(model)
    return model.eval()


def megatron_args(kind: str, parallel: ParallelConfig, grouped: bool = False) -> argparse.Namespace:
    """The argparse namespace Megatron-LM saves, for our test models (Megatron-LM argument names)."""
    cfg = model_config(kind)
    ns = argparse.Namespace(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads, group_query_attention=True,
        num_query_groups=cfg.num_query_groups, kv_channels=cfg.kv_channels, seq_length=cfg.seq_length,
        max_position_embeddings=cfg.seq_length, padded_vocab_size=256, vocab_size=cfg.vocab_size,
        make_vocab_size_divisible_by=cfg.make_vocab_size_divisible_by, normalization="RMSNorm",
        norm_epsilon=cfg.norm_epsilon, qk_layernorm=True, position_embedding_type="rope",
        rotary_percent=cfg.rotary_percent, rotary_base=cfg.rotary_base, rotary_interleaved=False,
        swiglu=True, add_bias_linear=False, add_qkv_bias=False, untie_embeddings_and_output_weights=True,
        init_method_std=0.02, hidden_dropout=0.0, attention_dropout=0.0, apply_layernorm_1p=False,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        expert_model_parallel_size=parallel.expert_model_parallel_size, expert_tensor_parallel_size=None,
        virtual_pipeline_model_parallel_size=None, sequence_parallel=parallel.sequence_parallel,
        params_dtype=torch.float32, ckpt_format="torch", transformer_impl="local",
        moe_grouped_gemm=grouped, num_experts=cfg.num_experts,
    )
    if cfg.is_moe:
        ns.moe_ffn_hidden_size = cfg.moe_ffn_hidden_size
        ns.moe_layer_freq = cfg.moe_layer_pattern()  # Megatron-LM stores the parsed 0/1 list
        ns.moe_router_topk = cfg.moe_router_topk
        ns.moe_router_score_function = "sigmoid"
        ns.moe_router_enable_expert_bias = True
        ns.moe_router_bias_update_rate = cfg.moe_router_bias_update_rate
        ns.moe_router_topk_scaling_factor = cfg.moe_router_topk_scaling_factor
        ns.moe_router_num_groups = cfg.moe_router_num_groups
        ns.moe_router_group_topk = cfg.moe_router_group_topk
        ns.moe_router_pre_softmax = False
        ns.moe_router_dtype = "fp32"
        ns.moe_router_load_balancing_type = "none"
        ns.moe_aux_loss_coeff = 0.0
        ns.moe_shared_expert_intermediate_size = cfg.moe_shared_expert_intermediate_size
        ns.moe_token_dispatcher_type = "alltoall"
    return ns


def _grouped_state(state: dict, style: str, experts_local: int) -> dict:
    """Rename SequentialMLP expert tensors to TEGroupedMLP ('te') or legacy GroupedMLP ('gmm') layout."""
    out, by_layer = {}, {}
    for key, value in state.items():
        marker = ".mlp.experts.local_experts."
        if marker not in key:
            out[key] = value
            continue
        head, rest = key.split(marker)
        index, name = rest.split(".", 1)
        if name.endswith("_extra_state"):
            continue
        if style == "te":
            module, param = name.rsplit(".", 1)
            out[f"{head}.mlp.experts.{module}.{param}{index}"] = value
        else:
            by_layer.setdefault(head, {})[(int(index), name)] = value
    for head, tensors in by_layer.items():
        fc1 = [tensors[(e, "linear_fc1.weight")] for e in range(experts_local)]  # [2F/T, h] each
        fc2 = [tensors[(e, "linear_fc2.weight")] for e in range(experts_local)]  # [h, F/T] each
        hidden = fc1[0].shape[1]
        out[f"{head}.mlp.experts.weight1"] = torch.stack([w.t() for w in fc1]).contiguous().view(hidden, -1)
        out[f"{head}.mlp.experts.weight2"] = torch.stack([w.t() for w in fc2]).contiguous().view(-1, hidden)
    return out


def _save_legacy(root: str, model, args, style: str, experts_local: int) -> None:
    from megatron.core import parallel_state as ps

    t, p = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    e = ps.get_expert_model_parallel_rank()
    name = f"mp_rank_{t:02d}" + (f"_{p:03d}" if args.pipeline_model_parallel_size > 1 else "")
    name += f"_{e:03d}" if args.expert_model_parallel_size > 1 else ""
    state = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
             for k, v in model.state_dict_for_save_checkpoint().items()}
    if style != "sequential":
        state = _grouped_state(state, style, experts_local)
    directory = os.path.join(root, f"iter_{ITERATION:07d}", name)
    os.makedirs(directory, exist_ok=True)
    payload = {"model": state, "args": args, "iteration": ITERATION, "checkpoint_version": 3.0,
               "rng_state": [{"random_rng_state": (3, tuple(range(5)), None), "torch_rng_state": torch.get_rng_state()}],
               "optimizer": {"optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}}
    torch.save(payload, os.path.join(directory, "model_optim_rng.pt"))
    if torch.distributed.get_rank() == 0:
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as handle:
            handle.write(str(ITERATION))


def _save_torch_dist(root: str, model, args, singleton: bool) -> None:
    from megatron.core import dist_checkpointing

    directory = os.path.join(root, f"iter_{ITERATION:07d}")
    if torch.distributed.get_rank() == 0:
        os.makedirs(directory, exist_ok=True)
    torch.distributed.barrier()
    metadata = {"singleton_local_shards": True} if singleton else None
    state = {"model": model.sharded_state_dict(metadata=metadata), "args": args, "iteration": ITERATION,
             "checkpoint_version": 3.0}
    dist_checkpointing.save(state, directory)
    if torch.distributed.get_rank() == 0:
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as handle:
            handle.write(str(ITERATION))


# (name, kind, ParallelConfig kwargs, [(format, style)])
SOURCES = [
    ("dense_tp2pp2", "dense", dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2),
     [("torch_dist", "regular"), ("torch", "sequential")]),
    ("moe_tp2ep2", "moe", dict(tensor_model_parallel_size=2, expert_model_parallel_size=2, sequence_parallel=True),
     [("torch_dist", "singleton"), ("torch", "sequential"), ("torch", "te")]),
    ("moe_pp2ep2", "moe", dict(pipeline_model_parallel_size=2, expert_model_parallel_size=2),
     [("torch_dist", "regular"), ("torch", "gmm")]),
]


def source_dir(root: str, name: str, fmt: str, style: str) -> str:
    return os.path.join(root, f"{name}_{fmt}_{style}")


def write_sources_worker(rank, world_size, root):
    """4 ranks: every SOURCES entry in every listed format."""
    for name, kind, kwargs, formats in SOURCES:
        parallel = ParallelConfig(**kwargs)
        model = build_ar(kind, parallel)
        cfg = model_config(kind)
        experts_local = (cfg.num_experts or 0) // parallel.expert_model_parallel_size
        for fmt, style in formats:
            out = source_dir(root, name, fmt, style)
            args = megatron_args(kind, parallel, grouped=style in ("te", "gmm"))
            if fmt == "torch_dist":
                _save_torch_dist(out, model, args, singleton=style == "singleton")
            else:
                _save_legacy(out, model, args, style, experts_local)
        torch.distributed.barrier()
    return True


# ----------------------------------------------------------------------------- one rank
def reference_logits(kind: str) -> torch.Tensor:
    model = build_ar(kind, ParallelConfig())
    ids = tokens()
    with torch.no_grad():
        return model(ids, torch.arange(SEQ)[None].expand(BATCH, SEQ), None).float()


def dllm_logits(out_dir: str, mask_kind: str = "causal") -> torch.Tensor:
    """Logits of a converted checkpoint loaded by Megatron-Core into a dLLM-built model (tril mask)."""
    from megatron_dllm.convert.verify import _build, load_dist
    from megatron_dllm.convert.readers import read_dllm_checkpoint
    from megatron_dllm.checkpoint.dcp_io import DcpReader

    directory, _, cfg = read_dllm_checkpoint(out_dir)
    rows = DcpReader(directory).tensors["embedding.word_embeddings.weight"].shape[0]
    model = _build(cfg, rows, causal=False)
    load_dist(model, directory)
    mask = torch.ones(SEQ, SEQ, dtype=torch.bool)
    if mask_kind == "causal":
        mask = mask.tril()
    with torch.no_grad():
        return model(tokens(), torch.arange(SEQ)[None].expand(BATCH, SEQ), mask).float()


def _convert(load, save, **kwargs):
    from megatron_dllm.convert.convert import ConvertRequest, prepare, run

    prepared = prepare(ConvertRequest(load=load, save=save, **kwargs))
    return run(prepared, progress=False)


def convert_and_verify_worker(rank, world_size, root, jobs):
    """One rank: for each job (source dir, kind, out name, convert kwargs) convert, verify, compare.

    Returns per job: the converter summary, verify()'s report, and max |logits - reference| of the
    converted model (loaded by Megatron-Core) against the single-rank reference AR model.
    """
    from megatron_dllm.convert.verify import verify

    refs = {kind: reference_logits(kind) for kind in ("dense", "moe")}
    out = {}
    for source, kind, name, kwargs in jobs:
        save = os.path.join(root, "out", name)
        summary = _convert(source, save, **kwargs)
        report = verify(source, save, batch=BATCH, seq_length=SEQ)
        got = dllm_logits(save)
        ref = refs[kind]
        vocab = 256
        out[name] = {"summary": summary, "verify": report,
                     "vs_reference": (got[..., :vocab] - ref[..., :vocab]).abs().max().item()}
    return out


def extras_worker(rank, world_size, root, moe_out, dense_source, dense_out):
    """One rank: mask-token growth, a wrong-source verify, and the HF export of the MoE conversion."""
    from megatron_dllm.checkpoint.dcp_io import DcpReader
    from megatron_dllm.convert.hf_check import compare_hf, load_hf_model
    from megatron_dllm.convert.hf_export import export_hf
    from megatron_dllm.convert.readers import open_source
    from megatron_dllm.convert.verify import verify

    result = {}
    # grow the vocabulary for a new mask token, mean-initialised, padded for TP 2
    grown = os.path.join(root, "out", "dense_grown")
    result["grown_summary"] = _convert(dense_source, grown, add_mask_token=True, target_tensor_parallel=2)
    reader = DcpReader(os.path.join(grown, "iter_0000000"))
    src = open_source(dense_source)
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        new = reader.read(key)
        old = src.tensor(key).read_box((0, 0), src.tensor(key).shape)
        result[key] = {
            "rows": new.shape[0], "old_rows_equal": torch.equal(new[:256], old[:256]),
            "mask_row_minus_mean": (new[256] - old[:256].double().mean(0).float()).abs().max().item(),
            "padding_rows_zero": bool((new[257:] == 0).all()),
        }
    result["grown_verify"] = verify(dense_source, grown, batch=BATCH, seq_length=SEQ)
    # a model with other weights must fail the check
    other = os.path.join(root, "other_ar")
    model = build_ar("dense", ParallelConfig())
    with torch.no_grad():
        model.output_layer.weight.mul_(1.01)
    _save_legacy(other, model, megatron_args("dense", ParallelConfig()), "sequential", 0)
    result["wrong_verify"] = verify(other, dense_out, batch=BATCH, seq_length=SEQ)
    # HF export of the MoE dLLM, loaded with our transformers class
    hf_dir = os.path.join(root, "hf_moe")
    result["export"] = export_hf(moe_out, hf_dir, max_shard_bytes=64 << 10, progress=False)
    result["compare"] = compare_hf(moe_out, hf_dir, batch=BATCH, seq_length=SEQ)
    dense_hf = os.path.join(root, "hf_dense")
    result["export_dense"] = export_hf(dense_out, dense_hf, progress=False)
    result["compare_dense"] = compare_hf(dense_out, dense_hf, batch=BATCH, seq_length=SEQ)
    bf16_hf = os.path.join(root, "hf_moe_bf16")
    export_hf(moe_out, bf16_hf, dtype="bf16", progress=False)
    with safe_open_index(bf16_hf) as tensors:
        result["bf16_dtypes"] = {name: str(tensors(name).dtype) for name in (
            "model.layers.1.mlp.gate.expert_bias", "model.layers.1.mlp.gate.weight", "lm_head.weight")}
    with open(os.path.join(hf_dir, "model.safetensors.index.json")) as handle:
        index = json.load(handle)
    from safetensors import safe_open

    shapes = {}
    for name, file in index["weight_map"].items():
        with safe_open(os.path.join(hf_dir, file), "pt") as handle:
            shapes[name] = tuple(handle.get_slice(name).get_shape())
    result["hf_shapes"] = shapes
    with open(os.path.join(hf_dir, "config.json")) as handle:
        result["hf_config"] = json.load(handle)
    from transformers import AutoModelForCausalLM

    _, info = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True, output_loading_info=True)
    result["loading_info"] = {k: sorted(v) if isinstance(v, (set, list)) else str(v) for k, v in info.items()}
    result["hf_class"] = type(load_hf_model(hf_dir)).__name__
    return result


def load_parallel_worker(rank, world_size, jobs):
    """2 ranks: load converted checkpoints under TP=2 / EP=2 with Megatron-Core; max |dlogits| vs reference.

    ``jobs``: [(out dir, kind, ParallelConfig kwargs)]. With TP the logits are vocabulary-parallel:
    each rank compares its slice.
    """
    from megatron.core import dist_checkpointing, parallel_state

    from megatron_dllm.convert.readers import read_dllm_checkpoint
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    refs = {}
    out = {}
    for out_dir, kind, kwargs in jobs:
        if kind not in refs:
            refs[kind] = reference_logits(kind)
        directory, _, cfg = read_dllm_checkpoint(out_dir)
        parallel = ParallelConfig(**kwargs)
        init_model_parallel(parallel, seed=SEED)
        model = build_model(cfg, parallel, causal=False, attention_backend="sdpa").eval()
        state = dist_checkpointing.load(model.sharded_state_dict(), directory)
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
        ids = tokens()
        with torch.no_grad():
            got = model(ids, torch.arange(SEQ)[None].expand(BATCH, SEQ), torch.ones(SEQ, SEQ, dtype=torch.bool).tril())
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        width = got.shape[-1]  # vocabulary-parallel logits: this rank's columns; compare real tokens only
        start, stop = tp_rank * width, min((tp_rank + 1) * width, 256)
        diff = (got.float()[..., :stop - start] - refs[kind][..., start:stop]).abs().max().item()
        out[(os.path.basename(out_dir), str(sorted(kwargs.items())))] = diff
    return out


class safe_open_index:
    """``with safe_open_index(dir) as get: get(name)`` reads tensors of a sharded safetensors export."""

    def __init__(self, directory):
        self.directory = directory

    def __enter__(self):
        from safetensors.torch import load_file

        with open(os.path.join(self.directory, "model.safetensors.index.json")) as handle:
            weight_map = json.load(handle)["weight_map"]
        return lambda name: load_file(os.path.join(self.directory, weight_map[name]))[name]

    def __exit__(self, *exc):
        return False


def conversion_suite_worker(rank, world_size, root, jobs, extras):
    """One rank: ``convert_and_verify_worker`` then ``extras_worker`` (one process start for both)."""
    return {"jobs": convert_and_verify_worker(rank, world_size, root, jobs),
            "extras": extras_worker(rank, world_size, root, *extras)}
