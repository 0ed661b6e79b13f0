"""What each row sees while one block is decoded: the attention mask of block-wise decoding.

Decoding block ``[lo, hi)`` of a sequence that ends at ``total`` (``hi`` may pass it: the last block
is padded to whole blocks) is defined by one forward over ``x[:hi]`` with the mask built here.
Rows split in two kinds, as in training's ``[xt ; x0]`` layout:

* committed rows ``i < lo`` (the clean stream x0: prompt and finished blocks) see keys by the
  clean-stream rule: ``"block_causal"`` (LLaDA2.0: key block <= query block) or ``"causal"``
  (Efficient-DLM / I-DLM: key <= query);
* rows of the block being decoded (the noisy stream xt) see every committed key and every key of
  their own block, both directions.

Slots at or past ``total`` are hidden: no row sees them, and each sees only itself (a row must see
at least one key). A KV-cached call feeding rows ``[c, end)`` takes ``mask[c:end, :end]``: the keys
of rows before ``c`` come from the cache, computed earlier with the same committed-row rule.
"""

from __future__ import annotations

import torch

CLEAN_STREAMS = ("block_causal", "causal")


def decode_mask(lo: int, hi: int, total: int, block_length: int, clean_stream: str = "block_causal",
                device="cpu") -> torch.Tensor:
    """[hi, hi] bool, True = may attend, for decoding block ``[lo, hi)`` (``lo`` a block start)."""
    if clean_stream not in CLEAN_STREAMS:
        raise ValueError(f"clean stream must be one of {CLEAN_STREAMS}, got {clean_stream!r}")
    i = torch.arange(hi, device=device)[:, None]
    j = torch.arange(hi, device=device)[None, :]
    if clean_stream == "causal":
        clean = j <= i
    else:
        clean = (j // block_length) <= (i // block_length)
    current = j < hi
    mask = torch.where(i < lo, clean, current) & (j < total)
    return torch.where(i >= total, i == j, mask)


def decode_positions(padded: int, total: int, device="cpu") -> torch.Tensor:
    """[padded] long positions; hidden slots past ``total`` reuse ``total - 1`` (nothing sees them,
    so their position changes no visible output, and it never exceeds the model's RoPE table)."""
    return torch.arange(padded, device=device).clamp(max=max(total - 1, 0))
