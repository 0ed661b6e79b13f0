"""Megatron-LM flags that have no field in config.py: accepted (no effect here) or not supported.

Operators' launch scripts pass many Megatron-LM flags that only restate what this package always
does (Megatron-Core models, RoPE without a learned position table, torch_dist checkpoints, fused
attention kernels, ...) or that tune things it does not have (W&B, manual GC). Those are accepted and
listed once at start-up. Flags of other architectures, fine-tuning modes or forks (MLA, MTP,
Megatron-FSDP, RL, Ling's own flags) are rejected with one line: ``not supported: FLAG (why)``.

``split_argv`` takes them out of a command line before argparse sees the rest.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from megatron_dllm.config import ConfigError

# flag -> (number of values: 0, 1 or "+", allowed values or None for any, why it has no effect here)
ACCEPTED: Dict[str, Tuple[object, Optional[Tuple[str, ...]], str]] = {
    "--use-mcore-models": (0, None, "models are always Megatron-Core GPTModel"),
    "--no-position-embedding": (0, None, "RoPE only: there is no learned position table"),
    "--use-rotary-position-embeddings": (0, None, "RoPE is always on"),
    "--no-masked-softmax-fusion": (0, None, "the core attention (SDPA / FlexAttention) does the softmax"),
    "--attention-softmax-in-fp32": (0, None, "the attention kernels accumulate the softmax in fp32"),
    "--use-flash-attn": (0, None, "--dllm-attention-backend picks the fused kernel (flex on CUDA)"),
    "--attention-backend": (1, ("auto", "flash", "fused", "unfused", "local"),
                            "the core attention is chosen by --dllm-attention-backend"),
    "--cross-entropy-loss-fusion": (0, None, "the loss is one vocab-parallel fp32 cross-entropy"),
    "--moe-permute-fusion": (0, None, "a kernel choice; Megatron-Core's default permutation is used"),
    "--no-gradient-accumulation-fusion": (0, None, "gradient-accumulation fusion is always off"),
    "--te-rng-tracker": (0, None, "Megatron-Core's CUDA RNG tracker is used"),
    "--no-create-attention-mask-in-dataloader": (0, None, "masks are built in the step, never in the dataloader"),
    "--dataloader-type": (1, ("single",), "the sampler is Megatron-LM's 'single' pretraining sampler"),
    "--num-workers": (1, None, "batches are assembled in the training process"),
    "--ckpt-format": (1, ("torch_dist",), "checkpoints are always torch_dist (dist_checkpointing)"),
    "--auto-detect-ckpt-format": (0, None, "only torch_dist checkpoints are read"),
    "--dist-ckpt-strictness": (1, None, "loads are strict: a missing or unexpected key is an error"),
    "--async-save": (0, None, "checkpoints are saved synchronously"),
    "--no-use-tokenizer-model-from-checkpoint-args": (0, None, "the tokenizer always comes from --tokenizer-model"),
    "--tokenizer-hf-include-special-tokens": (0, None, "tokenization happens in tools/preprocess_data.py"),
    "--optimizer": (1, ("adam",), "the optimizer is Megatron-Core's Adam with decoupled weight decay"),
    "--calculate-per-token-loss": (0, None, "losses are token sums normalised over all DP ranks and micro-batches"),
    "--no-check-for-nan-in-loss-and-grad": (0, None, "a NaN / Inf is always caught: see --skip-nonfinite-iters"),
    "--rotary-scaling-factor": (1, None, "used by Megatron-LM only with --use-rope-scaling or MLA"),
    "--manual-gc": (0, None, "Python's garbage collector is left automatic"),
    "--manual-gc-interval": (1, None, "Python's garbage collector is left automatic"),
    "--enable-experimental": (0, None, "no experimental Megatron-Core features are used"),
    "--logging-level": (1, None, "the console log has one level"),
    "--log-throughput": (0, None, "tokens/s and ms/iter are always logged"),
    "--log-params-norm": (0, None, "not computed; the gradient norm is logged"),
    "--log-num-zeros-in-grad": (0, None, "not computed; the gradient norm is logged"),
    "--log-timers-to-tensorboard": (0, None, "TensorBoard gets what the console shows (ms/iter)"),
    "--log-memory-to-tensorboard": (0, None, "TensorBoard gets what the console shows"),
    "--log-world-size-to-tensorboard": (0, None, "the world size is in the start-up log"),
    "--log-validation-ppl-to-tensorboard": (0, None, "validation logs the diffusion ELBO, not a perplexity"),
    "--wandb-project": (1, None, "no W&B logging: metrics go to TensorBoard and metrics.jsonl"),
    "--wandb-exp-name": (1, None, "no W&B logging: metrics go to TensorBoard and metrics.jsonl"),
}

_MLA = "multi-latent attention (DeepSeek) is another architecture; models here use (grouped-query) MHA"
_FSDP = "Megatron-FSDP is not wired: use --use-distributed-optimizer (optimizer state sharded over DP)"
_RL = "Megatron-RL (GRPO / inference engine): this entry point pretrains"

# flag -> (number of values, why it is rejected)
NOT_SUPPORTED: Dict[str, Tuple[object, str]] = {
    "--multi-latent-attention": (0, _MLA),
    "--q-lora-rank": (1, _MLA),
    "--kv-lora-rank": (1, _MLA),
    "--qk-head-dim": (1, _MLA),
    "--qk-pos-emb-head-dim": (1, _MLA),
    "--v-head-dim": (1, _MLA),
    "--mscale": (1, _MLA + " (YaRN)"),
    "--mscale-all-dim": (1, _MLA + " (YaRN)"),
    "--mtp-num-layers": (1, "multi-token prediction is an AR objective; a dLLM predicts all masked tokens"),
    "--mtp-loss-scaling-factor": (1, "multi-token prediction is an AR objective; a dLLM predicts all masked tokens"),
    "--bias-zero-mean-update": (0, "a Ling-V2 fork flag, not in Megatron-LM; expert-bias updates follow Megatron-Core"),
    "--moe-enable-deepep": (0, "the DeepEP dispatcher backend is not wired: use --moe-token-dispatcher-type alltoall"),
    "--moe-flex-dispatcher-backend": (1, "DeepEP / HybridEP backends are not wired: use "
                                         "--moe-token-dispatcher-type alltoall"),
    "--moe-router-force-load-balancing": (0, "a benchmarking switch that overrides the router's choice"),
    "--use-megatron-fsdp": (0, _FSDP),
    "--data-parallel-sharding-strategy": (1, _FSDP),
    "--fsdp-double-buffer": (0, _FSDP),
    "--use-nccl-ub": (0, _FSDP),
    "--megatron-fsdp-grad-comm-dtype": (1, _FSDP),
    "--megatron-fsdp-main-grads-dtype": (1, _FSDP),
    "--init-model-with-meta-device": (0, _FSDP),
    "--pretrained-checkpoint": (1, "use --load DIR --finetune (weights only, iteration 0)"),
    "--grpo-group-size": (1, _RL),
    "--grpo-prompts-per-step": (1, _RL),
    "--grpo-iterations": (1, _RL),
    "--grpo-clamp-eps-lower": (1, _RL),
    "--grpo-clamp-eps-upper": (1, _RL),
    "--grpo-kl-beta": (1, _RL),
    "--langrl-env-config": (1, _RL),
    "--inference-max-seq-length": (1, _RL),
    "--inference-max-requests": (1, _RL),
}

# Megatron-LM flags that name one of our settings: flag -> the flags it stands for
ALIASES: Dict[str, List[str]] = {
    "--sft": ["--dllm-objective", "sft"],  # Megatron-LM's SFT switch of pretrain_gpt.py
}

# (flag, value) pairs of real flags whose value is another fork's or format's
NOT_SUPPORTED_VALUES: Dict[Tuple[str, str], str] = {
    ("--optimizer", "adamw-bnb-8bit"): "bitsandbytes 8-bit Adam (a fork's optimizer): use --optimizer adam",
    ("--optimizer", "sgd"): "only Adam is wired: use --optimizer adam",
    ("--ckpt-format", "fsdp_dtensor"): "Megatron-FSDP checkpoints: checkpoints here are torch_dist",
    ("--ckpt-format", "torch"): "legacy per-rank checkpoints: use tools/convert_ar_to_dllm.py, then torch_dist",
    ("--tokenizer-type", "BailingTokenizer"): "Ling's own tokenizer class: pass --tokenizer-type "
                                              "HuggingFaceTokenizer with its tokenizer directory",
    ("--recompute-modules", "mla_up_proj"): "multi-latent attention (DeepSeek) is another architecture: "
                                            "leave mla_up_proj out",
    ("--dataloader-type", "cyclic"): "only Megatron-LM's 'single' pretraining sampler is wired",
    ("--dataloader-type", "external"): "only Megatron-LM's 'single' pretraining sampler is wired",
}


def _values(argv: List[str], i: int, nargs, inline: Optional[str]) -> Tuple[List[str], int]:
    """(values of the flag at argv[i], index after them)."""
    if inline is not None:
        return [inline], i + 1
    if nargs == 0:
        return [], i + 1
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--") and (nargs == "+" or j < i + 1 + nargs):
        j += 1
    return argv[i + 1:j], j


def check_value(flag: str, value: str) -> None:
    """Raise the one-line 'not supported' error for a value named in NOT_SUPPORTED_VALUES."""
    why = NOT_SUPPORTED_VALUES.get((flag, str(value)))
    if why:
        raise ConfigError(f"not supported: {flag} {value} ({why})")


def split_argv(argv: List[str]) -> Tuple[List[str], List[str]]:
    """(argv without the accepted-no-effect flags, one 'FLAG [VALUE] (why)' line per accepted flag).

    An alias (``ALIASES``: Megatron-LM's ``--sft``) is replaced by the flags it stands for.

    Raises ConfigError ``not supported: FLAG (why)`` for the first flag of NOT_SUPPORTED, or for a
    value of NOT_SUPPORTED_VALUES / outside an accepted flag's allowed values.
    """
    rest: List[str] = []
    accepted: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        flag, inline = token.split("=", 1) if token.startswith("--") and "=" in token else (token, None)
        if flag in NOT_SUPPORTED:
            raise ConfigError(f"not supported: {flag} ({NOT_SUPPORTED[flag][1]})")
        if flag in ALIASES and inline is None:
            rest += ALIASES[flag]
            i += 1
            continue
        if flag in ACCEPTED:
            nargs, allowed, why = ACCEPTED[flag]
            values, i = _values(argv, i, nargs, inline)
            for value in values:
                check_value(flag, value)
                if allowed is not None and value not in allowed:
                    raise ConfigError(f"not supported: {flag} {value} (accepted: {', '.join(allowed)}; {why})")
            shown = " ".join([flag] + values)
            if not any(line.startswith(shown + " (") for line in accepted):
                accepted.append(f"{shown} ({why})")
            continue
        if token.startswith("--"):
            for value in [inline] if inline is not None else _values(argv, i, "+", None)[0]:
                check_value(flag, value)
        rest.append(token)
        i += 1
    return rest, accepted


def yaml_key(key: str) -> Optional[str]:
    """The flag of a YAML key ('use_mcore_models' / 'use-mcore-models') if either table has it."""
    flag = "--" + key.lstrip("-").replace("_", "-")
    return flag if flag in ACCEPTED or flag in NOT_SUPPORTED else None
