"""Choosing the [MASK] token of a converted model, and initialising its embedding / output rows.

Policy (first that applies):

1. ``--mask-token-id ID``: that id. It must lie inside the padded vocabulary; an id at or past the
   tokenizer's vocabulary size turns that padding row into a real token (its rows are initialised).
2. the tokenizer's mask token (``<|mask|>``, ``[MASK]``, ``<mask>``) when ``--tokenizer-model`` is given;
3. otherwise a new token ``vocab_size``: a free padded row when ``vocab_size`` < padded size, else the
   vocabulary grows by one and is padded again as Megatron pads it (multiple of divisor x TP).

New rows of ``embedding.word_embeddings.weight`` and ``output_layer.weight`` are set by
``--mask-embedding-init``: ``mean`` (mean of the real vocabulary rows; LLaDA-style, keeps the new
token's embedding in-distribution), ``zero``, or ``copy:ID`` (a copy of row ID). Padding rows that
appear when the vocabulary grows are zero; padding rows dropped by a smaller padding were never tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional

import torch

from megatron_dllm.convert.errors import ConversionError


def padded_size(vocab_size: int, divisible_by: int, tensor_parallel: int) -> int:
    """Megatron-LM's vocabulary padding: the next multiple of divisor x TP."""
    multiple = divisible_by * tensor_parallel
    return -(-vocab_size // multiple) * multiple


@dataclass
class MaskTokenPlan:
    """What the converter does to the vocabulary."""

    mask_token_id: int
    how: str                  # "explicit", "tokenizer", "padded-row" or "grown"
    source_vocab_size: int    # tokenizer vocabulary of the source (unpadded)
    vocab_size: int           # tokenizer vocabulary of the output (unpadded)
    source_padded: int        # rows in the source checkpoint
    padded: int               # rows in the output checkpoint
    init: str                 # how new rows are filled
    init_rows: List[int]      # rows set by ``init`` (the mask token's, when it is new)

    def as_dict(self) -> dict:
        return asdict(self)


def parse_init(text: str) -> str:
    """Validate ``--mask-embedding-init`` (mean | zero | copy:ID); returns it unchanged."""
    if text in ("mean", "zero"):
        return text
    if text.startswith("copy:") and text[5:].isdigit():
        return text
    raise ConversionError(f"--mask-embedding-init {text!r}: use mean, zero or copy:ID")


def plan_mask_token(
    *,
    vocab_size: int,
    source_padded: int,
    divisible_by: int,
    target_tensor_parallel: int,
    mask_token_id: Optional[int] = None,
    add_mask_token: bool = False,
    tokenizer_mask_id: Optional[int] = None,
    init: str = "mean",
) -> MaskTokenPlan:
    """Decide the mask token id and the output vocabulary; raise ConversionError on bad input."""
    init = parse_init(init)
    if vocab_size > source_padded:
        raise ConversionError(f"the vocabulary size {vocab_size} exceeds the checkpoint's {source_padded} rows")
    padded = max(padded_size(vocab_size, divisible_by, target_tensor_parallel), vocab_size)
    new_vocab, init_rows = vocab_size, []
    if mask_token_id is not None:
        if add_mask_token:
            raise ConversionError("give either --mask-token-id or --add-mask-token, not both")
        if not 0 <= mask_token_id < padded:
            raise ConversionError(
                f"--mask-token-id {mask_token_id} is out of range: the vocabulary has {vocab_size} tokens "
                f"padded to {padded} rows (valid ids 0..{padded - 1}; use --add-mask-token for a new one)")
        how = "explicit"
        if mask_token_id >= vocab_size:
            new_vocab, init_rows = mask_token_id + 1, [mask_token_id]
    elif tokenizer_mask_id is not None and not add_mask_token:
        if not 0 <= tokenizer_mask_id < vocab_size:
            raise ConversionError(f"the tokenizer's mask token {tokenizer_mask_id} is outside the "
                                  f"vocabulary of {vocab_size} tokens")
        mask_token_id, how = tokenizer_mask_id, "tokenizer"
    else:
        mask_token_id, new_vocab, init_rows = vocab_size, vocab_size + 1, [vocab_size]
        grown = max(padded_size(new_vocab, divisible_by, target_tensor_parallel), new_vocab)
        how = "padded-row" if grown == padded else "grown"
        padded = grown
    if init.startswith("copy:") and int(init[5:]) >= vocab_size:
        raise ConversionError(f"--mask-embedding-init {init}: row {init[5:]} is not a token of the "
                              f"{vocab_size}-token vocabulary")
    return MaskTokenPlan(mask_token_id=mask_token_id, how=how, source_vocab_size=vocab_size,
                         vocab_size=new_vocab, source_padded=source_padded, padded=padded,
                         init=init, init_rows=init_rows)


@torch.no_grad()
def fill_vocab_rows(out: torch.Tensor, plan: MaskTokenPlan, copied_rows: int) -> torch.Tensor:
    """Finish an embedding / output weight ``out`` ``[padded, hidden]`` in place.

    Rows ``[0, copied_rows)`` hold the source's rows; later rows are zeroed, then the plan's new rows
    are initialised from the source's real vocabulary rows ``[0, source_vocab_size)``.
    """
    if copied_rows < out.shape[0]:
        out[copied_rows:].zero_()
    if not plan.init_rows:
        return out
    if plan.init == "mean":  # in row blocks: a float copy of a large embedding would double memory
        total = torch.zeros(out.shape[1:], dtype=torch.float64)
        for start in range(0, plan.source_vocab_size, 4096):
            total += out[start:min(start + 4096, plan.source_vocab_size)].double().sum(dim=0)
        value = (total / plan.source_vocab_size).to(out.dtype)
    elif plan.init == "zero":
        value = torch.zeros(out.shape[1:], dtype=out.dtype)
    else:
        value = out[int(plan.init[5:])].clone()
    for row in plan.init_rows:
        out[row] = value
    return out
