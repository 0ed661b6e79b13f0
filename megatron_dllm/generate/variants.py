"""What a checkpoint's metadata says about decoding it, and the checks a prompt must pass.

``dllm_meta.json`` records how a model was trained: ``objective`` (``ar``, ``mdlm``, ``bd``),
``token_shift`` (the token at i is predicted from the output at i - 1) and ``clean_stream``
(``"block_causal"`` or ``"causal"``). Checkpoints written before these keys existed lack them: no
shift, block-causal. Generation honours them; nothing is taken from the command line that the
metadata already fixes.
"""

from __future__ import annotations

from typing import List, Optional

from megatron_dllm.config import ConfigError
from megatron_dllm.generate.context import CLEAN_STREAMS

DECODERS = ("auto", "diffusion", "ar")


def decoding_variant(meta: dict) -> dict:
    """``{"token_shift": bool, "clean_stream": str}`` of a checkpoint (DecodeConfig fields)."""
    clean = meta.get("clean_stream") or "block_causal"
    if clean not in CLEAN_STREAMS:
        raise ConfigError(f"dllm_meta.json has clean_stream {clean!r}; this version decodes {CLEAN_STREAMS}")
    return {"token_shift": bool(meta.get("token_shift", False)), "clean_stream": clean}


def resolve_decoder(meta: dict, requested: str = "auto") -> str:
    """``"ar"`` or ``"diffusion"``. ``auto``: AR for an AR checkpoint (objective ``ar``), else
    diffusion. AR decoding of a dLLM needs a clean stream that is itself causal, so that its output
    at i saw exactly the tokens up to i, as greedy left-to-right decoding feeds them."""
    if requested not in DECODERS:
        raise ConfigError(f"--decoder must be one of {DECODERS}, got {requested!r}")
    objective = meta.get("objective")
    if requested == "auto":
        return "ar" if objective == "ar" else "diffusion"
    if requested == "ar" and objective != "ar" and decoding_variant(meta)["clean_stream"] != "causal":
        raise ConfigError(
            f"--decoder ar: this checkpoint was trained with objective {objective!r} and a block-causal "
            "clean stream, so no output of it was trained to predict the next token under a causal mask; "
            "AR decoding needs an AR checkpoint or one trained with --dllm-clean-stream-causal "
            "(use --decoder diffusion)")
    return requested


def max_positions(model_cfg) -> int:
    """Largest sequence the model's position table covers."""
    return model_cfg.max_position_embeddings or model_cfg.seq_length


def check_prompt(prompt: List[int], gen_length: int, vocab_size: int, positions: int,
                 label: Optional[str] = None) -> None:
    """Raise ValueError (one line, naming the fix) when ``prompt`` cannot be decoded by the model:
    an id outside the vocabulary, or prompt + gen_length past its position table."""
    name = f"prompt {label!r}" if label is not None else "prompt"
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{name}: token id {bad[0]} is outside the model's vocabulary [0, {vocab_size}); "
                         "check --prompt-ids or --tokenizer-model")
    if len(prompt) + gen_length > positions:
        raise ValueError(f"{name}: {len(prompt)} prompt tokens + --gen-length {gen_length} = "
                         f"{len(prompt) + gen_length} exceeds the model's {positions} positions "
                         "(max_position_embeddings); shorten the prompt or lower --gen-length")


def decode_configs(meta: dict, thresholds, vocab_size: Optional[int] = None, **settings) -> list:
    """One validated ``DecodeConfig`` per threshold (a sweep), with the checkpoint's variant
    (``token_shift``, ``clean_stream``) from its metadata and ``settings`` for the other fields;
    with ``vocab_size``, a mask / EOS id outside the vocabulary is refused too."""
    from megatron_dllm.generate.decoding import DecodeConfig

    configs = [DecodeConfig(threshold=t, **decoding_variant(meta), **settings) for t in thresholds]
    for cfg in configs:
        cfg.validate(vocab_size)
    return configs


def generation_length(requested: Optional[int], default: int) -> int:
    """``requested`` (--gen-length), or ``default`` when it is None; ValueError when it is < 1."""
    length = default if requested is None else requested
    if length < 1:
        raise ValueError(f"--gen-length {length} must be >= 1")
    return length
