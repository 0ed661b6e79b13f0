"""Checks that fail fast, before any data is read or any model is built.

Each failure is a ConfigError whose one-line message names the fix; ``pretrain`` prints it and exits 2.
"""

from __future__ import annotations

import math
import os
import re

from megatron_dllm.config import ConfigError, validate
from megatron_dllm.config_ranges import check_ranges
from megatron_dllm.objectives import objective_type
from megatron_dllm.objectives.dpo import check_dpo_flags
from megatron_dllm.objectives.sft import check_sft_flags


def train_iters(run) -> int:
    """Optimizer steps of the run, from --train-iters or --train-tokens."""
    t = run.training
    if t.train_iters is not None:
        return t.train_iters
    tokens_per_step = t.global_batch_size * run.model.seq_length
    return math.ceil(t.train_tokens / tokens_per_step)


def check_run(run, world_size: int, files: bool = True) -> None:
    """Validate a RunConfig for ``world_size`` ranks; ``files=False`` (``--dry-run``) skips file checks."""
    m, p, d, t = run.model, run.parallel, run.diffusion, run.training
    check_ranges(run)
    validate(m, p, world_size, context_parallel=True)
    _check_context_parallel(run)
    dp = p.data_parallel_size(world_size)
    if (t.train_iters is None) == (t.train_tokens is None):
        raise ConfigError("give exactly one of --train-iters or --train-tokens")
    if (t.train_iters is not None and t.train_iters < 1) or (t.train_tokens is not None and t.train_tokens < 1):
        raise ConfigError("--train-iters / --train-tokens must be positive")
    for name, mbs in (("--micro-batch-size", t.micro_batch_size),
                      ("--dllm-bd-micro-batch-size", d.bd_micro_batch_size)):
        if mbs is None:
            continue
        if mbs < 1 or t.global_batch_size % (mbs * dp):
            raise ConfigError(
                f"--global-batch-size {t.global_batch_size} is not divisible by {name} {mbs} x "
                f"data-parallel size {dp}: change one of them"
            )
    objective = objective_type(d.objective)
    objective.check_config(d)  # the options this objective cannot honour
    check_sft_flags(d)  # SFT-only flags given to another objective
    check_dpo_flags(d)  # DPO-only flags given to another objective
    objective.block_schedule(run)  # parses and checks every block size divides --seq-length
    if (d.t_low is None) != (d.t_high is None):
        raise ConfigError("give both --dllm-t-low and --dllm-t-high, or neither")
    if d.embedding_noise_std < 0 or d.embedding_noise_iters < 0:
        raise ConfigError("--dllm-embedding-noise-std and --dllm-embedding-noise-iters must be >= 0")
    _check_alignment(d)
    if d.attention_backend == "flex" and t.device == "cpu":
        raise ConfigError("--dllm-attention-backend flex cannot train on CPU (no backward): use sdpa")
    data = run.data
    if not data.mock_data and not data.data_path:
        raise ConfigError("no training data: pass --data-path PREFIX (see tools/preprocess_data.py) or --mock-data")
    check_tokenizer(data, files)
    ck = run.checkpoint
    if ck.save_interval is not None and not ck.save:
        raise ConfigError("--save-interval needs --save DIR")
    if ck.exit_signal_handler and not ck.save:
        raise ConfigError("--exit-signal-handler needs --save DIR to write the checkpoint to")
    if t.lr_decay_style == "WSD" and not t.lr_wsd_decay_iters:
        raise ConfigError("--lr-decay-style WSD needs --lr-wsd-decay-iters")
    if t.lr_warmup_iters >= max(1, t.lr_decay_iters or train_iters(run)) and t.lr_warmup_iters > 0:
        raise ConfigError("--lr-warmup-iters must be smaller than the decay iterations")
    if t.bf16 and t.device == "cpu":
        raise ConfigError("--bf16 is for GPU runs; CPU runs train in fp32")
    if t.skip_nonfinite_iters < 0:
        raise ConfigError("--skip-nonfinite-iters must be >= 0 (0: stop at the first NaN / Inf)")
    if t.exit_interval is not None and t.exit_interval < 1:
        raise ConfigError("--exit-interval must be >= 1 (leave it out to run to the end)")
    if t.exit_duration_in_mins is not None and t.exit_duration_in_mins < 1:
        raise ConfigError("--exit-duration-in-mins must be >= 1 (leave it out to run to the end)")
    if t.distributed_timeout_minutes < 1:
        raise ConfigError("--distributed-timeout-minutes must be >= 1 (Megatron-LM's default: 10)")


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_KIND = {"SentencePieceTokenizer": "sentencepiece", "Llama2Tokenizer": "sentencepiece",
         "HuggingFaceTokenizer": "hf"}


def check_tokenizer(data, files: bool = True) -> None:
    """--tokenizer-type / --tokenizer-model agree; a missing path that looks like a HF hub name is an
    error (nothing is downloaded); with ``files`` the file must exist and be of the given type."""
    from megatron_dllm.data.errors import DataError
    from megatron_dllm.data.tokenizer import resolve_tokenizer_path

    kind, path = data.tokenizer_type, data.tokenizer_model
    if kind == "NullTokenizer":
        if path:
            raise ConfigError("--tokenizer-type NullTokenizer reads no file: leave out --tokenizer-model")
        return
    if not data.mock_data and not path:
        raise ConfigError("--data-path needs --tokenizer-model (the tokenizer the data was preprocessed with) "
                          "or --tokenizer-type NullTokenizer")
    if not path:
        return
    if not os.path.exists(path):
        if _HUB_NAME.match(path) and os.path.splitext(path)[1] not in (".model", ".json"):
            raise ConfigError(
                f"--tokenizer-model {path} looks like a Hugging Face hub name: nothing is downloaded here; "
                f"download it first (e.g. huggingface-cli download {path} --local-dir DIR) and pass "
                f"--tokenizer-model DIR")
        if files:
            raise ConfigError(f"--tokenizer-model {path}: file not found")
        return
    if kind:
        try:
            found, file = resolve_tokenizer_path(path)
        except DataError as exc:
            raise ConfigError(str(exc)) from exc
        if found != _KIND[kind]:
            what, fix = (("a HF tokenizer.json", "HuggingFaceTokenizer") if found == "hf"
                         else ("a sentencepiece model", "SentencePieceTokenizer"))
            raise ConfigError(f"--tokenizer-type {kind} but --tokenizer-model {file} is {what}: "
                              f"pass --tokenizer-type {fix}")


CONTEXT_PARALLEL_OBJECTIVES = ("ar", "mdlm", "bd")


def _check_context_parallel(run) -> None:
    """What --context-parallel-size > 1 needs (objectives/context_parallel.py)."""
    m, p, d = run.model, run.parallel, run.diffusion
    cp = p.context_parallel_size
    if cp == 1:
        return
    if d.objective not in CONTEXT_PARALLEL_OBJECTIVES:
        raise ConfigError(f"--context-parallel-size {cp} works with --dllm-objective "
                          f"{' / '.join(CONTEXT_PARALLEL_OBJECTIVES)}, not {d.objective}: use --context-parallel-size 1")
    if d.attention_backend == "te":
        raise ConfigError("--context-parallel-size > 1 with --dllm-attention-backend te: Transformer Engine's context "
                          "parallelism assumes a causal or full mask; use --dllm-attention-backend auto|sdpa|flex")
    if d.loss_norm == "sequence":
        raise ConfigError("--dllm-loss-norm sequence is not supported with --context-parallel-size > 1 (a "
                          "sequence's tokens are spread over the CP ranks): use all_tokens or masked_tokens")
    tp = p.tensor_model_parallel_size if p.sequence_parallel else 1
    if m.seq_length % (cp * tp):
        raise ConfigError(f"--seq-length {m.seq_length} must be a multiple of --context-parallel-size {cp}"
                          + (f" x --tensor-model-parallel-size {tp} (sequence parallelism)" if tp > 1 else "")
                          + " so every rank holds the same number of positions")


def _check_alignment(d) -> None:
    """The label / stream variants of issue-12 style ablations combine only in meaningful ways."""
    if d.token_shift and d.label_shift:
        raise ConfigError("--dllm-token-shift and --dllm-label-shift are two shifts: pick one")
    if d.ar_loss_weight < 0:
        raise ConfigError("--dllm-ar-loss-weight must be >= 0")
    if d.ar_loss_weight > 0 and not d.clean_stream_causal:
        raise ConfigError("--dllm-ar-loss-weight needs --dllm-clean-stream-causal (a block-causal clean "
                          "stream sees the next token, so a next-token loss on it is trivial)")


def resolve_vocab_size(run) -> str | None:
    """Without --vocab-size (and no preset), take the tokenizer's size, as Megatron-LM does; returns a
    note for the log, or None when nothing changed. Reads the --tokenizer-model file."""
    import dataclasses

    from megatron_dllm.data.tokenizer import load_tokenizer

    path = run.data.tokenizer_model
    if not run.vocab_from_tokenizer or not path or run.data.tokenizer_type == "NullTokenizer":
        return None
    size = load_tokenizer(path).vocab_size
    if size == run.model.vocab_size:
        return None
    run.model = dataclasses.replace(run.model, vocab_size=size)
    padded = run.model.padded_vocab_size(run.parallel.tensor_model_parallel_size)
    return f"--vocab-size {size} from the tokenizer (padded to {padded})"


def check_checkpoint_config(run) -> None:
    """When --load has a checkpoint, its model config must match the flags (before building anything)."""
    from megatron_dllm.checkpoint import state as checkpointing

    ck = run.checkpoint
    if not ck.load or not os.path.isdir(ck.load):
        return  # nothing to resume from: the run starts from scratch (as Megatron-LM does)
    iteration = checkpointing.latest_iteration(ck.load)
    if iteration is None:
        return
    meta = checkpointing.read_meta(ck.load, iteration)
    saved = meta.get("run", {}).get("model")
    if saved:
        checkpointing.check_model_config(saved, run.model, checkpointing.checkpoint_path(ck.load, iteration))
