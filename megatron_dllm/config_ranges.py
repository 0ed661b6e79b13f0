"""The range of every numeric run setting, checked before anything else: a number that means
nothing (a negative learning rate, a zero hidden size, NaN) is a one-line error naming the flag.

    check_ranges(run)      # ConfigError: "--lr -1.0 must be a finite number >= 0"

``RANGES`` maps (section, field) to (low, high, open_low, open_high); None leaves a side unbounded,
``open_*`` excludes the bound itself. Fields left unset (None) are not checked. Relations between
settings (divisibility, one flag needing another) stay in ``config.validate`` and the preflight.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Dict, Optional, Tuple

from megatron_dllm.config import ConfigError

Range = Tuple[Optional[float], Optional[float], bool, bool]
AT_LEAST_1: Range = (1, None, False, False)
AT_LEAST_0: Range = (0, None, False, False)
POSITIVE: Range = (0, None, True, False)
PROBABILITY: Range = (0, 1, False, True)     # [0, 1): dropout, Adam betas

RANGES: Dict[Tuple[str, str], Range] = {
    ("model", "num_layers"): AT_LEAST_1,
    ("model", "hidden_size"): AT_LEAST_1,
    ("model", "ffn_hidden_size"): AT_LEAST_1,
    ("model", "num_attention_heads"): AT_LEAST_1,
    ("model", "num_query_groups"): AT_LEAST_1,
    ("model", "kv_channels"): AT_LEAST_1,
    ("model", "seq_length"): AT_LEAST_1,
    ("model", "max_position_embeddings"): AT_LEAST_1,
    ("model", "vocab_size"): (2, None, False, False),
    ("model", "make_vocab_size_divisible_by"): AT_LEAST_1,
    ("model", "norm_epsilon"): POSITIVE,
    ("model", "rotary_base"): POSITIVE,
    ("model", "init_method_std"): POSITIVE,
    ("model", "hidden_dropout"): PROBABILITY,
    ("model", "attention_dropout"): PROBABILITY,
    ("model", "num_experts"): AT_LEAST_1,
    ("model", "moe_ffn_hidden_size"): AT_LEAST_1,
    ("model", "moe_first_k_dense"): AT_LEAST_0,
    ("model", "moe_router_topk"): AT_LEAST_1,
    ("model", "moe_router_bias_update_rate"): AT_LEAST_0,
    ("model", "moe_router_topk_scaling_factor"): POSITIVE,
    ("model", "moe_router_num_groups"): AT_LEAST_1,
    ("model", "moe_router_group_topk"): AT_LEAST_1,
    ("model", "moe_aux_loss_coeff"): AT_LEAST_0,
    ("model", "moe_z_loss_coeff"): AT_LEAST_0,
    ("model", "moe_shared_expert_intermediate_size"): AT_LEAST_1,
    ("diffusion", "mask_token_id"): AT_LEAST_0,
    ("diffusion", "t_eps"): (0, 1, True, True),
    ("diffusion", "t_low"): (0, 1, True, False),     # the band of NoiseConfig: 0 < low <= high <= 1
    ("diffusion", "t_high"): (0, 1, True, False),
    ("diffusion", "t_buckets"): AT_LEAST_1,
    ("diffusion", "eval_t_points"): AT_LEAST_1,
    ("diffusion", "dpo_beta"): POSITIVE,
    ("diffusion", "dpo_elbo_samples"): AT_LEAST_1,
    ("diffusion", "dpo_block_size"): AT_LEAST_1,
    ("training", "global_batch_size"): AT_LEAST_1,
    ("training", "lr"): AT_LEAST_0,
    ("training", "min_lr"): AT_LEAST_0,
    ("training", "lr_warmup_iters"): AT_LEAST_0,
    ("training", "lr_warmup_init"): AT_LEAST_0,
    ("training", "lr_decay_iters"): AT_LEAST_1,
    ("training", "lr_wsd_decay_iters"): AT_LEAST_1,
    ("training", "weight_decay"): AT_LEAST_0,
    ("training", "adam_beta1"): PROBABILITY,
    ("training", "adam_beta2"): PROBABILITY,
    ("training", "adam_eps"): POSITIVE,
    ("training", "clip_grad"): AT_LEAST_0,
    ("training", "seed"): AT_LEAST_0,
    ("training", "eval_interval"): AT_LEAST_0,
    ("training", "eval_iters"): AT_LEAST_1,
    ("data", "mid_level_dataset_surplus"): AT_LEAST_0,
    ("checkpoint", "save_interval"): AT_LEAST_1,
    ("checkpoint", "keep_last"): AT_LEAST_0,
    ("logging", "log_interval"): AT_LEAST_1,
}


def _flag(section_cls, name: str) -> str:
    field = {f.name: f for f in dataclasses.fields(section_cls)}[name]
    return field.metadata.get("flag") or "--" + name.replace("_", "-")


def _is_integer(section_cls, name: str) -> bool:
    return typing.get_type_hints(section_cls)[name] in (int, Optional[int])


def _describe(rng: Range) -> str:
    low, high, open_low, open_high = rng
    parts = []
    if low is not None:
        parts.append(f"{'>' if open_low else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if open_high else '<='} {high:g}")
    return " and ".join(parts)


def _inside(value: float, rng: Range) -> bool:
    low, high, open_low, open_high = rng
    if not math.isfinite(value):
        return False
    if low is not None and (value <= low if open_low else value < low):
        return False
    if high is not None and (value >= high if open_high else value > high):
        return False
    return True


def check_ranges(run) -> None:
    """Raise ConfigError for the first numeric setting of ``run`` (a RunConfig) outside its range."""
    for (section, name), rng in RANGES.items():
        config = getattr(run, section)
        value = getattr(config, name)
        if value is None or isinstance(value, bool):
            continue
        if not _inside(float(value), rng):
            kind = "an integer" if _is_integer(type(config), name) else "a finite number"
            raise ConfigError(f"{_flag(type(config), name)} {value} must be {kind} {_describe(rng)}")
    d = run.diffusion
    if d.t_low is not None and d.t_high is not None and d.t_low > d.t_high:
        raise ConfigError(f"--dllm-t-low {d.t_low} must not exceed --dllm-t-high {d.t_high}")
