"""Numerical check of a conversion: the converted model, run causally, is the AR model.

On one rank, in fp32, on the same random tokens ``[b, s]``:

* the **AR model** is built causal from the source checkpoint's configuration and loaded from the
  source: with Megatron-Core's own ``dist_checkpointing.load`` when the source is a torch_dist
  checkpoint whose keys match the model (independent of the converter), else through the converter's
  source reader (legacy checkpoints, other key spellings);
* the **converted model** is loaded from the output with ``dist_checkpointing.load`` twice: built as a
  dLLM and run with an explicit lower-triangular mask, and built causal and run with no mask.

Reported: max |logits difference| over the source vocabulary, the KL divergence KL(p_AR || p_dLLM)
(mean and max over positions, softmax over the source vocabulary), both models' next-token
cross-entropy, and, to show the converted model is usable as a dLLM, its masked-token
cross-entropy with a bidirectional mask on the same tokens, half of them replaced by [MASK].
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import torch
import torch.nn.functional as F

from megatron_dllm.checkpoint.layout import recorded_mask_token_id
from megatron_dllm.config import ModelConfig, ParallelConfig
from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.convert.keymap import per_layer_request
from megatron_dllm.convert.readers import DLLM_META, Source, open_source, read_dllm_checkpoint
from megatron_dllm.convert.roles import check_verify_roles

# Fields that may differ between the AR and the converted config without changing the function.
_FREE_FIELDS = {"vocab_size", "seq_length", "max_position_embeddings", "hidden_dropout", "attention_dropout",
                "init_method_std", "moe_token_dispatcher_type", "moe_grouped_gemm", "moe_aux_loss_coeff",
                "moe_z_loss_coeff", "moe_router_bias_update_rate", "moe_router_load_balancing_type"}


def _build(cfg: ModelConfig, rows: int, causal: bool):
    from megatron_dllm.model.builder import build_model

    model = build_model(dataclasses.replace(cfg, make_vocab_size_divisible_by=rows, moe_grouped_gemm=False),
                        ParallelConfig(),
                        causal=causal, attention_backend="sdpa")
    return model.eval()


def _sharded_tensors(model):
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, apply_factories

    sharded = model.sharded_state_dict()
    apply_factories(sharded)
    values = list(nested_values(sharded))
    return ([v for v in values if isinstance(v, ShardedTensor)], [v for v in values if isinstance(v, ShardedObject)])


def load_dist(model, directory: str) -> None:
    """Load ``model`` from a torch_dist checkpoint with Megatron-Core's loader (safe readers: no code runs)."""
    from megatron_dllm.checkpoint.dist_load import safe_dist_load

    state = safe_dist_load(model.sharded_state_dict(), directory)
    expected = set(model.state_dict())  # the common part (common.pt) may hold e.g. optimizer steps
    model.load_state_dict({k: v for k, v in state.items() if k in expected})


@torch.no_grad()
def fill_from_source(model, source: Source) -> None:
    """Copy every weight of ``model`` (one rank, no parallelism) from ``source``; all must be found."""
    for param in model.parameters():
        param.fill_(float("nan"))
    tensors, _ = _sharded_tensors(model)
    for sh in tensors:
        sizes = (1,) * sh.prepend_axis_num + tuple(sh.local_shape)
        key, shape, offsets, box = per_layer_request(sh.key, sh.global_shape, sh.global_offset, sizes)
        src = source.tensor(key, shape)
        if tuple(src.shape) != tuple(shape):
            raise ConversionError(f"{key}: the source has shape {list(src.shape)}, the model {list(shape)}")
        sh.data.copy_(src.read_box(offsets, box).view(sh.data.shape))
    missing = [name for name, p in model.named_parameters() if torch.isnan(p).any()]
    if missing:
        raise ConversionError(f"parameters not found in the source: {', '.join(missing[:3])}")


def _keys_match(model, source: Source) -> bool:
    if source.format != "torch_dist":
        return False
    tensors, objects = _sharded_tensors(model)
    reader = source.reader
    return (all(sh.key in reader.tensors and tuple(reader.tensors[sh.key].shape) == tuple(sh.global_shape)
                for sh in tensors) and all(obj.unique_key in reader.objects for obj in objects))


def _compare(ref: torch.Tensor, got: torch.Tensor, vocab: int) -> dict:
    a, b = ref[..., :vocab].double(), got[..., :vocab].double()
    log_p, log_q = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return {"max_abs_dlogits": (a - b).abs().max().item(), "kl_mean": kl.mean().item(), "kl_max": kl.max().item()}


def _next_token_ce(logits: torch.Tensor, tokens: torch.Tensor, vocab: int) -> float:
    return F.cross_entropy(logits[:, :-1, :vocab].double().reshape(-1, vocab), tokens[:, 1:].reshape(-1)).item()


def check_verify_options(*, tolerance: float, batch: int, seq_length: Optional[int]) -> None:
    """ConversionError naming the flag for a tolerance that is not a finite number >= 0, or sizes < 1."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConversionError(f"--tolerance {tolerance} must be a finite number >= 0 (largest allowed "
                              "|dlogits|), e.g. --tolerance 1e-5")
    if batch < 1:
        raise ConversionError(f"--batch {batch} must be >= 1")
    if seq_length is not None and seq_length < 2:
        raise ConversionError(f"--seq-length {seq_length} must be >= 2 (the next-token loss needs two tokens)")


@torch.no_grad()
def verify(ar_path: str, dllm_path: str, *, batch: int = 2, seq_length: Optional[int] = None, seed: int = 1234,
           tolerance: float = 1e-5, model_config: Optional[ModelConfig] = None) -> dict:
    """Run the AR and the converted model on the same tokens; returns the report (``ok`` = within tolerance).

    Needs torch.distributed initialised with one rank; sets model parallelism to one rank.
    """
    from megatron_dllm.platform.distributed import init_model_parallel

    check_verify_options(tolerance=tolerance, batch=batch, seq_length=seq_length)
    check_verify_roles(ar_path, dllm_path)
    source = open_source(ar_path, model_config)
    directory, meta, dcfg = read_dllm_checkpoint(dllm_path)
    scfg = source.config
    diffs = [f.name for f in dataclasses.fields(ModelConfig)
             if f.name not in _FREE_FIELDS and getattr(scfg, f.name) != getattr(dcfg, f.name)]
    if diffs:
        raise ConversionError(f"the converted model's architecture differs from the AR model's in {', '.join(diffs)}")
    vocab = scfg.vocab_size
    mask_id = recorded_mask_token_id(meta)
    if mask_id is None:
        raise ConversionError(f"{directory}/{DLLM_META} names no mask token")
    # both shifts read the prediction of position i from the output at i - 1 in one stream
    label_shift = bool(meta.get("label_shift", False)) or bool(meta.get("token_shift", False))
    alignment = ("token_shift" if meta.get("token_shift") else "label_shift" if meta.get("label_shift")
                 else "same_position")
    seq = seq_length or min(scfg.seq_length, 64)
    max_positions = scfg.max_position_embeddings or scfg.seq_length
    if seq > max_positions:
        raise ConversionError(f"--seq-length {seq} is longer than the model's {max_positions} positions: "
                              f"pass --seq-length {max_positions} or less")
    init_model_parallel(ParallelConfig(), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq), generator=gen)
    positions = torch.arange(seq).unsqueeze(0).expand(batch, seq)

    src_rows = source.tensor("embedding.word_embeddings.weight").shape[0]
    ar = _build(scfg, src_rows, causal=True)
    if _keys_match(ar, source):
        load_dist(ar, source.path)
        loader = "dist_checkpointing"
    else:
        fill_from_source(ar, source)
        loader = "source reader"
    ar_logits = ar(tokens, positions, None).float()
    del ar

    from megatron_dllm.checkpoint.dcp_io import DcpReader

    rows = DcpReader(directory).tensors["embedding.word_embeddings.weight"].shape[0]
    dllm = _build(dcfg, rows, causal=False)
    load_dist(dllm, directory)
    tril = torch.ones(seq, seq, dtype=torch.bool).tril()
    causal_logits = dllm(tokens, positions, tril).float()
    noise = torch.rand(batch, seq, generator=gen) < 0.5
    noise[:, 0] = True
    xt = torch.where(noise, torch.full_like(tokens, mask_id), tokens)
    full = torch.ones(seq, seq, dtype=torch.bool)
    dllm_logits = dllm(xt, positions, full).float()
    del dllm
    built_causal = _build(dcfg, rows, causal=True)
    load_dist(built_causal, directory)
    causal_none_logits = built_causal(tokens, positions, None).float()
    del built_causal

    if label_shift:
        targets, logits_at, where = tokens[:, 1:], dllm_logits[:, :-1], noise[:, 1:]
    else:
        targets, logits_at, where = tokens, dllm_logits, noise
    masked_ce = F.cross_entropy(logits_at[where][:, :vocab].double(), targets[where]).item()
    explicit = _compare(ar_logits, causal_logits, vocab)
    implicit = _compare(ar_logits, causal_none_logits, vocab)
    worst = max(explicit["max_abs_dlogits"], implicit["max_abs_dlogits"])
    finite = bool(torch.isfinite(dllm_logits).all())
    return {
        "ar": os.path.abspath(source.path), "dllm": os.path.abspath(directory), "ar_loader": loader,
        "tokens": [batch, seq], "vocab_compared": vocab,
        "causal_mask": explicit, "causal_built": implicit,
        "max_abs_dlogits": worst, "kl_mean": max(explicit["kl_mean"], implicit["kl_mean"]),
        "ar_next_token_ce": _next_token_ce(ar_logits, tokens, vocab),
        "converted_next_token_ce": _next_token_ce(causal_logits, tokens, vocab),
        "dllm_masked_ce": masked_ce, "dllm_masked_tokens": int(noise.sum()), "mask_token_id": int(mask_id),
        "alignment": alignment,
        "dllm_logits_finite": finite, "tolerance": tolerance,
        "ok": bool(worst <= tolerance and finite),
    }
