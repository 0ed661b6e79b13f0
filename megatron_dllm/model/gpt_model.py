"""Megatron-Core GPTModel with RoPE taken from explicit position ids.

Megatron-Core's ``GPTModel`` derives RoPE from the sequence length (positions 0..s-1) and ignores
``position_ids``. The block-diffusion layout ``[xt ; x0]`` needs both halves at positions 0..L-1
(DESIGN.md invariant 7), and decoding with a KV cache needs offsets; so this subclass feeds the
rotary table with the ``position_ids`` passed to ``forward``. Everything else is the stock model.
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.gpt import GPTModel

from megatron_dllm.model.core_attention import DiffusionCoreAttention


class PositionedRotaryEmbedding(RotaryEmbedding):
    """RotaryEmbedding that looks positions up in its table instead of assuming 0..s-1.

    ``positions`` (``[b, s]`` long, batch-first) is set by :class:`DiffusionGPTModel` around each
    forward; when it is None the stock behaviour is used. Returns ``[s, b, 1, rot_dim]``, which
    Megatron's unfused RoPE broadcasts over heads. ``table_len`` bounds the largest position.
    """

    positions: Optional[torch.Tensor] = None
    table_len: int = 0

    def forward(self, max_seq_len: int, offset: int = 0, packed_seq: bool = False, cp_group=None):
        positions = self.positions
        if positions is None:
            return super().forward(max_seq_len, offset, packed_seq, cp_group)
        group = cp_group if cp_group is not None else self.cp_group
        cp = group.size() if group is not None else 1
        # Under context parallelism max_seq_len is the whole input (local length x CP) and the
        # positions are this rank's rows: look them up, no further slicing.
        if positions.shape[-1] * cp != max_seq_len:
            raise ValueError(
                f"position_ids cover {positions.shape[-1]} tokens but the model sees {max_seq_len // cp}"
            )
        table = self.get_emb(self.table_len)[:, 0, 0, :]  # [T, rot_dim], the stock table unsliced
        return table[positions.transpose(0, 1).to(table.device)].unsqueeze(2)


class DiffusionGPTModel(GPTModel):
    """GPTModel whose RoPE honours ``position_ids`` (both halves of ``[xt ; x0]`` at 0..L-1).

    ``forward(..., logits_index=idx)`` computes the output layer for the sequence positions ``idx``
    only (1-D long tensor, in that order): the noisy half of ``[xt ; x0]`` (``arange(L)``, or
    ``logits_prefix=L``), the shifted rows of ``--dllm-token-shift``, or noisy + clean rows for the
    AR loss on a causal clean stream. The logits then have ``len(idx)`` positions. Without sequence
    parallelism the hidden states are selected before the vocabulary projection, so the other rows
    are never projected; under it each rank holds a slice of the sequence, so the full logits are
    computed and the rows selected afterwards (same result, more compute).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.position_embedding_type != "rope":
            raise ValueError("DiffusionGPTModel supports rope position embeddings only")
        # Same state, same buffers: only forward() differs, so the checkpoint layout stays stock.
        self.rotary_pos_emb.__class__ = PositionedRotaryEmbedding
        self.rotary_pos_emb.table_len = self.max_sequence_length
        self._logits_index = None
        self._core_attention = [m for m in self.modules() if isinstance(m, DiffusionCoreAttention)]
        if self.post_process:
            self.output_layer.register_forward_pre_hook(self._select_before_output_layer)
            self.output_layer.register_forward_hook(self._select_after_output_layer)

    def _select_before_output_layer(self, module, args):
        if self._logits_index is None or self.config.sequence_parallel:
            return None
        hidden = args[0]  # [s, b, h]
        index = self._logits_index.to(hidden.device)
        return (hidden.index_select(0, index),) + tuple(args[1:])

    def _select_after_output_layer(self, module, args, output):
        if self._logits_index is None or not self.config.sequence_parallel:
            return None
        logits, bias = output  # [s, b, v / tp], the whole sequence (gathered by the layer)
        return logits.index_select(0, self._logits_index.to(logits.device)), bias

    def forward(self, input_ids, position_ids, attention_mask, *args, logits_prefix=None,
                logits_index=None, cp_split=None, **kwargs):
        """Stock GPTModel.forward; ``position_ids [b, s]`` also drive RoPE when given.

        Under context parallelism ``input_ids`` / ``position_ids`` are this rank's rows of the input,
        ``attention_mask`` its rows of the one-rank mask (``[.., rows, S]``) and ``cp_split`` the
        :class:`~megatron_dllm.model.context_parallel.ContextParallelSplit` they were cut with;
        ``logits_index`` then indexes the local rows.
        """
        if logits_prefix is not None:
            if logits_index is not None:
                raise ValueError("give logits_prefix or logits_index, not both")
            logits_index = torch.arange(logits_prefix)
        if (cp_split is not None) != (self.config.context_parallel_size > 1):
            raise ValueError(f"context_parallel_size is {self.config.context_parallel_size}: pass cp_split "
                             "exactly when it is > 1")
        rope = self.rotary_pos_emb
        rope.positions = position_ids
        self._logits_index = logits_index
        for module in self._core_attention:
            module.cp_split = cp_split
        try:
            return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)
        finally:
            rope.positions = None
            self._logits_index = None
            for module in self._core_attention:
                module.cp_split = None
