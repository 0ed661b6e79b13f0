"""Declarative key maps: where each tensor of a Megatron-Core GPT checkpoint goes in ours.

Our checkpoints use Megatron-Core's *sharded* keys (the global keys of ``sharded_state_dict``), e.g.
``decoder.layers.3.mlp.experts.experts.linear_fc1.weight`` with a leading expert axis. Two kinds of
source are mapped onto them:

* **legacy** (``--ckpt-format torch``): each rank file holds its module ``state_dict``: local layer
  numbers, local expert numbers, TP shards, and either module names (local spec:
  ``input_layernorm``) or TE's fused names (``linear_qkv.layer_norm_weight``). :data:`LAYER_RULES`
  names, for every local key, its sharded key and how TP split it (:class:`Split`).
* **torch_dist** checkpoints already use sharded keys; older or differently configured writers
  differ in a few spellings, which :func:`torch_dist_aliases` lists (TE's unfused
  ``pre_mlp_layernorm`` in MoE layers, per-expert ``singleton_local_shards`` keys with separate
  ``_w`` / ``_v`` halves, and layer-stacked keys: Megatron-Core stores homogeneous decoders as
  ``decoder.layers.<rest>`` with a leading layer axis, heterogeneous ones per layer).

How TP splits a weight (Megatron-Core ``tensor_parallel/layers.py``): ColumnParallelLinear on dim 0
(``linear_qkv``, ``linear_fc1``, ``output_layer``; the embedding is vocab-parallel on dim 0),
RowParallelLinear on dim 1 (``linear_proj``, ``linear_fc2``); norms, routers and row-parallel biases
are replicated. A SwiGLU ``linear_fc1`` holds ``[w_r ; v_r]`` on TP rank r, while the global
(sharded) tensor is ``[w_0 .. w_{T-1} ; v_0 .. v_{T-1}]``: merging must de-interleave.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import List, Optional, Tuple


class Split(Enum):
    """How tensor parallelism splits a tensor (its place in the global tensor on TP rank r)."""

    REPLICATED = "replicated"   # every rank holds all of it (take rank 0's)
    COLUMN = "column"           # dim 0 block r
    ROW = "row"                 # dim 1 block r
    SWIGLU = "swiglu"           # dim 0: [w_r ; v_r] locally -> w block r and v block r globally
    GROUPED_FC1 = "grouped_fc1"  # legacy GroupedMLP weight1 [h, E_local * 2F/T]
    GROUPED_FC2 = "grouped_fc2"  # legacy GroupedMLP weight2 [E_local * F/T, h]


# (regex on the key after "decoder.layers.<i>.", sharded-key template, split, expert group or None)
# Templates use \1, \2 for the regex groups; an expert group names the local expert index.
# ``fc1`` rules say COLUMN; the reader turns COLUMN into SWIGLU for fc1 when the model is gated.
LAYER_RULES: Tuple[Tuple[str, str, Split, Optional[int]], ...] = (
    (r"input_layernorm\.(weight|bias)", r"self_attention.linear_qkv.layer_norm_\1", Split.REPLICATED, None),
    (r"self_attention\.linear_qkv\.layer_norm_(weight|bias)", r"self_attention.linear_qkv.layer_norm_\1",
     Split.REPLICATED, None),
    (r"self_attention\.linear_qkv\.(weight|bias)", r"self_attention.linear_qkv.\1", Split.COLUMN, None),
    (r"self_attention\.linear_proj\.weight", r"self_attention.linear_proj.weight", Split.ROW, None),
    (r"self_attention\.linear_proj\.bias", r"self_attention.linear_proj.bias", Split.REPLICATED, None),
    (r"self_attention\.(q|k)_layernorm\.(weight|bias)", r"self_attention.\1_layernorm.\2", Split.REPLICATED, None),
    (r"pre_mlp_layernorm\.(weight|bias)", r"mlp.linear_fc1.layer_norm_\1", Split.REPLICATED, None),
    (r"mlp\.linear_fc1\.layer_norm_(weight|bias)", r"mlp.linear_fc1.layer_norm_\1", Split.REPLICATED, None),
    (r"mlp\.linear_fc1\.(weight|bias)", r"mlp.linear_fc1.\1", Split.COLUMN, None),
    (r"mlp\.linear_fc2\.weight", r"mlp.linear_fc2.weight", Split.ROW, None),
    (r"mlp\.linear_fc2\.bias", r"mlp.linear_fc2.bias", Split.REPLICATED, None),
    (r"mlp\.router\.(weight|bias|expert_bias)", r"mlp.router.\1", Split.REPLICATED, None),
    (r"mlp\.shared_experts\.linear_fc1\.(weight|bias)", r"mlp.shared_experts.linear_fc1.\1", Split.COLUMN, None),
    (r"mlp\.shared_experts\.linear_fc2\.weight", r"mlp.shared_experts.linear_fc2.weight", Split.ROW, None),
    (r"mlp\.shared_experts\.linear_fc2\.bias", r"mlp.shared_experts.linear_fc2.bias", Split.REPLICATED, None),
    # SequentialMLP
    (r"mlp\.experts\.local_experts\.(\d+)\.linear_fc1\.(weight|bias)", r"mlp.experts.experts.linear_fc1.\2",
     Split.COLUMN, 1),
    (r"mlp\.experts\.local_experts\.(\d+)\.linear_fc2\.weight", r"mlp.experts.experts.linear_fc2.weight",
     Split.ROW, 1),
    (r"mlp\.experts\.local_experts\.(\d+)\.linear_fc2\.bias", r"mlp.experts.experts.linear_fc2.bias",
     Split.REPLICATED, 1),
    # TEGroupedMLP: one tensor per local expert, suffixed with its index
    (r"mlp\.experts\.linear_fc1\.weight(\d+)", r"mlp.experts.experts.linear_fc1.weight", Split.COLUMN, 1),
    (r"mlp\.experts\.linear_fc2\.weight(\d+)", r"mlp.experts.experts.linear_fc2.weight", Split.ROW, 1),
    # legacy GroupedMLP: all local experts in one tensor each (expanded by the reader)
    (r"mlp\.experts\.weight1", r"mlp.experts.experts.linear_fc1.weight", Split.GROUPED_FC1, None),
    (r"mlp\.experts\.weight2", r"mlp.experts.experts.linear_fc2.weight", Split.GROUPED_FC2, None),
)

# (regex on a whole key, sharded key, split) for tensors outside the decoder layers.
GLOBAL_RULES: Tuple[Tuple[str, str, Split], ...] = (
    (r"embedding\.word_embeddings\.weight", "embedding.word_embeddings.weight", Split.COLUMN),
    (r"decoder\.final_layernorm\.(weight|bias)", r"decoder.final_layernorm.\1", Split.REPLICATED),
    (r"output_layer\.weight", "output_layer.weight", Split.COLUMN),
    (r"output_layer\.bias", "output_layer.bias", Split.COLUMN),
)

# Keys that carry no weights of the target model: skipped without comment.
IGNORED = re.compile(r"(.*_extra_state.*|.*\.local_tokens_per_expert|.*\.inv_freq|optimizer\..*|rng_state.*)$")
# Keys skipped with a note: multi-token-prediction heads (LLaDA2.0 drops them).
DROPPED = re.compile(r"^(mtp\.|decoder\.mtp).*")

VOCAB_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight")
EXPERT_PREFIX = ".mlp.experts.experts."
_LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def is_fc1(sharded_key: str) -> bool:
    return sharded_key.endswith((".linear_fc1.weight", ".linear_fc1.bias"))


def map_layer_key(suffix: str) -> Optional[Tuple[str, Split, Optional[int]]]:
    """(sharded suffix, split, local expert index or None) for a legacy key below a layer."""
    for pattern, template, split, expert_group in LAYER_RULES:
        match = re.fullmatch(pattern, suffix)
        if match:
            expert = int(match.group(expert_group)) if expert_group else None
            return match.expand(template), split, expert
    return None


def map_global_key(key: str) -> Optional[Tuple[str, Split]]:
    for pattern, template, split in GLOBAL_RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(template), split
    return None


def torch_dist_aliases(key: str) -> List[str]:
    """Other spellings of sharded ``key`` that a torch_dist writer may have used (plain renames)."""
    out = []
    for ours, theirs in ((".self_attention.linear_qkv.layer_norm_", ".input_layernorm."),
                         (".mlp.linear_fc1.layer_norm_", ".pre_mlp_layernorm.")):
        if ours in key:
            out.append(key.replace(ours, theirs))
    return out


def split_layer_key(key: str) -> Optional[Tuple[int, str]]:
    """(layer index, rest) of ``decoder.layers.<i>.<rest>``, or None."""
    match = _LAYER_KEY.match(key)
    return (int(match.group(1)), match.group(2)) if match else None


def per_layer_request(key: str, global_shape, offsets, sizes):
    """(key, shape, offsets, sizes) of a chunk in per-layer form.

    Megatron-Core stores homogeneous decoders (no MoE, or MoE in every layer given as an int
    frequency) with *layer-stacked* keys ``decoder.layers.<rest>`` and a leading layer axis, and
    heterogeneous ones per layer (``decoder.layers.<i>.<rest>``). Sources are indexed per layer; a
    chunk of a stacked key (one layer: size 1 on axis 0) becomes the same box of layer ``offsets[0]``.
    """
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "decoder" and parts[1] == "layers" and not parts[2].isdigit():
        if sizes[0] != 1:
            raise ValueError(f"{key}: a chunk of a layer-stacked key must hold one layer")
        rest = key[len("decoder.layers."):]
        return (f"decoder.layers.{offsets[0]}.{rest}", tuple(global_shape[1:]), tuple(offsets[1:]),
                tuple(sizes[1:]))
    return key, tuple(global_shape), tuple(offsets), tuple(sizes)
