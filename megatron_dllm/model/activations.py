"""Activation memory of one micro-batch: what a forward pass stores for its backward (an estimate).

The formula counts, per transformer layer, every tensor our model saves for backward, in the layout
Megatron-Core uses (sequence-first ``[s, b, h]``). Symbols: ``T = s * b`` tokens of the micro-batch,
``Th`` the tokens whose hidden-size activations this rank holds (``T / TP`` with sequence parallelism,
else ``T``), ``a`` the activation dtype's bytes (2 bf16, 4 fp32), heads and FFN sizes per TP rank.

    norm (input / pre-MLP)   input, rstd (fp32); the torch composite RMSNorm (CPU) also x * rstd
    linear inputs            the norm output (qkv / fc1 / router / shared expert share it)
    attention                qkv output, q/k norms (q is a copy when a rank has > 1 KV group), RoPE (4 x
                             [s, b, rot]), rotated q and k, output, logsumexp (fp32); sdpa also keeps
                             one additive mask [b, 1, s, s] per layer, te an inverted bool mask per
                             layer; flex keeps no s^2 term (its BlockMask is O((s / 128)^2) per
                             micro-batch and is left out); GQA heads are not expanded (enable_gqa).
                             Context parallelism: s is the rank's share; the gathered k and v hold
                             all CP x s positions, and the additive mask s x (CP x s)
    dense MLP (SwiGLU)       fc1 output (2f), silu output, linear half + offset, product (fc2 input)
    MoE                      router bookkeeping (fp32 logits, bool maps, fp32 probs, top-k indices:
                             10 E + 28 k + 8 groups + 4 bytes per token, measured on our router),
                             T * topk routed rows per rank (balanced routing) each with its input (h),
                             fc1 output, SwiGLU terms and the probability-scaled fc2 input (6 f_e),
                             plus the shared expert as a dense MLP
    output (last stage)      final norm, fp32 softmax of the loss positions (the noisy half in BD),
                             and, while the loss runs, the output layer's logits (the noisy half in
                             BD; both halves under sequence parallelism) next to that fp32 copy

The linear_proj input is the attention output itself (a view), not a copy. Everything is derived
from the saved tensors of our CPU build (``torch.autograd.graph.saved_tensors_hooks``; the test in
tests/distributed checks it); CUDA kernels may save less (fused SwiGLU, TE) or more.

Recompute: ``none`` (what pretraining runs today); ``selective`` = Megatron's core-attention
recompute (drops the logsumexp and the per-layer mask copy; q, k, v stay as its inputs); ``full`` =
every layer keeps only its input, plus one layer's full set while it is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_dllm.config import ModelConfig

RECOMPUTE = ("none", "selective", "full")
BACKENDS = ("flex", "sdpa", "te")


@dataclass(frozen=True)
class ActivationEnv:
    """How the activations of one rank are laid out."""

    tp: int = 1
    etp: int = 1
    sequence_parallel: bool = False
    act_bytes: int = 2                # 2 bf16 (GPU), 4 fp32 (CPU)
    fused_norm: bool = True           # CUDA fused RMSNorm (input + rstd); False: torch composite (CPU)
    backend: str = "flex"             # core attention: flex | sdpa | te
    recompute: str = "none"
    cp: int = 1                       # context parallelism: ``seq`` is this rank's share, keys all cp x seq


def _norm(tokens: int, width: int, cfg: ModelConfig, env: ActivationEnv) -> int:
    """Bytes a norm over ``width`` saves for ``tokens`` rows (its output is counted by the consumer)."""
    a = env.act_bytes
    if cfg.normalization == "LayerNorm":
        return tokens * width * a + 2 * tokens * 4          # input, mean, rstd
    extra = 0 if env.fused_norm else tokens * width * a     # composite: x * rstd as well
    return tokens * width * a + tokens * 4 + extra


def _mlp(rows: int, ffn: int, cfg: ModelConfig, a: int) -> int:
    """Saved bytes of an MLP after its fc1 input: SwiGLU 2f + silu + (linear + offset) + product."""
    return rows * (5 if cfg.swiglu else 2) * ffn * a


def _attention(T: int, Th: int, b: int, s: int, cfg: ModelConfig, env: ActivationEnv) -> int:
    a, tp = env.act_bytes, env.tp
    d = cfg.head_dim
    nq, ng = cfg.num_attention_heads // tp, cfg.query_groups // tp
    rot = int(d * cfg.rotary_percent)
    K, sk = T * env.cp, s * env.cp  # key tokens: under CP the keys / values of every rank are gathered
    out = _norm(Th, cfg.hidden_size, cfg, env) + Th * cfg.hidden_size * a        # norm, qkv input
    out += T * (nq + 2 * ng) * d * a                                              # qkv output
    if cfg.qk_layernorm:
        out += T * nq * d * a if ng > 1 else 0                                    # q copy (k: a view)
        out += T * (nq + ng) * 4 + (0 if env.fused_norm else T * (nq + ng) * d * a)
    out += 4 * T * rot * a                                                        # RoPE cos / sin
    out += T * nq * d * a * 2                                                     # rotated q, output
    out += K * ng * d * a                                                         # rotated (gathered) k
    out += K * ng * d * a if env.cp > 1 else 0                                    # gathered v
    if env.recompute != "selective":
        out += b * nq * s * 4                                                     # logsumexp
        if env.backend == "sdpa":
            out += b * s * sk * a                                                 # additive mask copy
        elif env.backend == "te":
            out += b * s * sk                                                     # inverted bool mask
    return out


def _ffn(T: int, Th: int, moe: bool, cfg: ModelConfig, env: ActivationEnv) -> int:
    a, tp, h = env.act_bytes, env.tp, cfg.hidden_size
    out = _norm(Th, h, cfg, env) + Th * h * a                                     # norm, its output
    if not moe:
        return out + _mlp(T, (cfg.ffn_hidden_size or 4 * h) // tp, cfg, a)
    k, E = cfg.moe_router_topk, cfg.num_experts
    out += Th * (10 * E + 28 * k + 8 * (cfg.moe_router_num_groups or 0) + 4)      # router bookkeeping
    rows = Th * k * env.etp                                                       # routed rows here
    f_e = (cfg.moe_ffn_hidden_size or cfg.ffn_hidden_size or 4 * h) // env.etp
    out += rows * (h * a + 4) + _mlp(rows, f_e, cfg, a) + rows * f_e * a          # + prob-scaled input
    if cfg.moe_shared_expert_intermediate_size:
        out += _mlp(T, cfg.moe_shared_expert_intermediate_size // tp, cfg, a)
    return out


def layer_bytes(cfg: ModelConfig, moe: bool, seq: int, micro_batch: int, env: ActivationEnv) -> int:
    """Bytes one transformer layer stores for backward for one micro-batch, without recompute."""
    T = seq * micro_batch
    Th = T // env.tp if env.sequence_parallel else T
    return _attention(T, Th, micro_batch, seq, cfg, env) + _ffn(T, Th, moe, cfg, env)


def layer_input_bytes(cfg: ModelConfig, seq: int, micro_batch: int, env: ActivationEnv) -> int:
    """The hidden states entering a layer: all that full recompute keeps per layer."""
    T = seq * micro_batch
    return (T // env.tp if env.sequence_parallel else T) * cfg.hidden_size * env.act_bytes


def output_bytes(cfg: ModelConfig, seq: int, micro_batch: int, loss_positions: int, logit_positions: int,
                 vocab_per_rank: int, env: ActivationEnv) -> dict:
    """Last-stage extras of one micro-batch: stored for backward, and transient while the loss runs.

    ``loss_positions`` per sample carry the loss (L: the noisy half in BD); ``logit_positions`` reach
    the output layer (L, or 2L in BD under sequence parallelism, where the hidden states are not sliced).
    Stored: final norm, its output, the fp32 softmax of the loss positions. Transient: the output
    layer's logits, alive next to that fp32 copy until the loss returns.
    """
    T = seq * micro_batch
    Th = T // env.tp if env.sequence_parallel else T
    stored = _norm(Th, cfg.hidden_size, cfg, env) + Th * cfg.hidden_size * env.act_bytes
    stored += loss_positions * micro_batch * (vocab_per_rank * 4 + 16)      # softmax + per-token terms
    transient = logit_positions * micro_batch * vocab_per_rank * env.act_bytes
    return {"stored": stored, "transient": transient}


def inflight_units(pp_rank: int, pp: int, vpp: int, num_microbatches) -> int:
    """Model-chunk forward passes whose activations rank ``pp_rank`` holds at the 1F1B peak.

    Non-interleaved: ``PP - rank`` micro-batches; interleaved (``vpp`` chunks per rank), Megatron's
    warm-up ``2 (PP - rank - 1) + (vpp - 1) PP`` chunk passes plus one. Capped by the micro-batches.
    """
    if vpp <= 1:
        units = pp - pp_rank
    else:
        units = 2 * (pp - pp_rank - 1) + (vpp - 1) * pp + 1
    if num_microbatches is not None:
        units = min(units, num_microbatches * max(vpp, 1))
    return max(units, 1)


def stage_bytes(cfg: ModelConfig, moe_layers, env: ActivationEnv, *, seq: int, micro_batch: int,
                loss_positions: int, logit_positions: int, vocab_per_rank: int, pp_rank: int, pp: int,
                vpp: int, num_microbatches) -> tuple:
    """(peak bytes, of which the loss transient) of pipeline rank ``pp_rank`` holding ``moe_layers``.

    ``moe_layers``: one 0/1 (dense / MoE) per layer of the rank. The rank holds ``inflight_units``
    chunk passes of its layers' activations; the first stage also the token ids, other stages their
    output until its backward, the last stage the output extras of one micro-batch.
    """
    per_layer = [layer_bytes(cfg, bool(moe), seq, micro_batch, env) for moe in moe_layers]
    if env.recompute == "full":
        stored = len(per_layer) * layer_input_bytes(cfg, seq, micro_batch, env)
    else:
        stored = sum(per_layer)
    units = inflight_units(pp_rank, pp, vpp, num_microbatches)
    micro_batches = units / vpp                        # micro-batches in flight, for per-sample extras
    total = units * stored / vpp
    if env.recompute == "full" and per_layer:
        total += max(per_layer)                        # one layer rematerialised at a time
    if pp_rank == 0:
        total += micro_batches * seq * micro_batch * 8  # token ids kept by the embedding
    transient = 0
    if pp_rank < pp - 1:                               # stage output kept until its backward
        total += micro_batches * layer_input_bytes(cfg, seq, micro_batch, env)
    else:
        extra = output_bytes(cfg, seq, micro_batch, loss_positions, logit_positions, vocab_per_rank, env)
        total += extra["stored"]
        transient = extra["transient"]
    return int(total + transient), transient
