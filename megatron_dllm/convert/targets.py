"""The tensors and objects our checkpoint of a model holds, taken from Megatron-Core itself.

The model is built on the meta device (no memory) on one rank, and its ``sharded_state_dict`` lists
every global key, global shape and chunk exactly as ``dist_checkpointing.save`` would write them, so
a converted checkpoint matches what ``megatron_dllm.pretrain --load`` asks for by construction.
Needs an initialised process group (one rank is enough); model-parallel state is set to 1 rank.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Tuple

from megatron_dllm.config import ModelConfig, ParallelConfig


@dataclass
class TargetTensor:
    """One chunk to write: ``sizes`` includes the prepended (layer / expert) axes as 1s."""

    key: str
    global_shape: Tuple[int, ...]
    offsets: Tuple[int, ...]
    sizes: Tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.sizes:
            n *= s
        return n


@dataclass
class TargetObject:
    """A ShardedObject (``key/shard_...``) and its value (``None`` for local-spec ``_extra_state``)."""

    unique_key: str
    value: object


def target_layout(model_cfg: ModelConfig, padded_vocab: int) -> Tuple[List[TargetTensor], List[TargetObject]]:
    """Chunks and objects of ``model_cfg``'s dLLM checkpoint with ``padded_vocab`` embedding rows.

    Chunks are in the order of the model (embedding, layers, final norm, output layer); the
    dense and expert ``linear_fc1`` of a SwiGLU model come as two chunks each (``w`` then ``v``),
    as Megatron-Core stores them.
    """
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, apply_factories

    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    # Grouped-GEMM experts store the same sharded keys as SequentialMLP; build the portable one.
    build_cfg = dataclasses.replace(model_cfg, make_vocab_size_divisible_by=padded_vocab, moe_grouped_gemm=False)
    parallel = ParallelConfig()
    init_model_parallel(parallel)
    model = build_model(build_cfg, parallel, meta=True)
    sharded = model.sharded_state_dict()
    apply_factories(sharded)
    tensors, objects = [], []
    for value in nested_values(sharded):
        if isinstance(value, ShardedTensor):
            if value.flattened_range is not None:
                raise RuntimeError(f"{value.key}: flattened tensors are not expected in a model state dict")
            sizes = (1,) * value.prepend_axis_num + tuple(value.local_shape)
            tensors.append(TargetTensor(value.key, tuple(value.global_shape), tuple(value.global_offset), sizes))
        elif isinstance(value, ShardedObject):
            objects.append(TargetObject(value.unique_key, value.data))
    del model, sharded
    return tensors, objects
