"""Which model output predicts which token: the label alignments of the dLLM variants (issue 12).

LLaDA2.0 as released predicts the token at position i from the output at i ("same", DESIGN.md
decision 8). Two alternatives keep more of a converted AR model (FINDINGS.md section 4):

* token shift (``--dllm-token-shift``; Fast-dLLM v2, I-DLM): the token at i is predicted from the
  output at i - 1. Inside a block that output is the noisy stream's; for the first token of a block
  it is the clean stream's output at the last position of the previous block (the x0 half of
  ``[xt ; x0]``, which saw every earlier clean token and nothing of this block). Position 0 has no
  predecessor and carries no loss. With block size 1 every token starts a block, so training is
  exactly AR next-token training on the clean stream.
* causal clean stream + AR loss (``--dllm-clean-stream-causal --dllm-ar-loss-weight W``): the x0
  half attends strictly causally and its output at i is also trained to predict x0[i + 1].

All functions are pure index arithmetic on batch-first tensors; ``rows`` index the model input
(length 2L for ``[xt ; x0]``, L for the MDLM layout).
"""

from __future__ import annotations

import torch


def same_position_rows(seq_len: int) -> torch.Tensor:
    """Rows whose outputs predict positions 0..L-1 without a shift: the noisy half, ``arange(L)``."""
    return torch.arange(seq_len)


def token_shift_rows(seq_len: int, block_size: int, two_streams: bool) -> torch.Tensor:
    """[L] long: the input row whose output predicts position i under the token shift.

    ``two_streams`` is True for ``[xt ; x0]`` (block-diffusion layout): a block's first position
    reads the clean stream at ``L + i - 1``; other positions read the noisy row ``i - 1``. With one
    stream (MDLM layout, block = L) every position reads ``i - 1``. Row 0 maps to 0 as a
    placeholder: position 0 has no predecessor (see ``token_shift_loss_mask``).
    """
    if block_size < 1 or seq_len % block_size:
        raise ValueError(f"block size {block_size} must divide seq_len {seq_len}")
    i = torch.arange(seq_len)
    prev = (i - 1).clamp(min=0)
    if not two_streams:
        return prev
    starts_block = (i % block_size) == 0
    return torch.where(starts_block & (i > 0), seq_len + i - 1, prev)


def token_shift_loss_mask(loss_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: ``loss_mask`` without position 0, which nothing can predict under the shift."""
    out = loss_mask.to(torch.bool).clone()
    out[:, 0] = False
    return out


def clean_stream_rows(seq_len: int) -> torch.Tensor:
    """Rows of the clean half of ``[xt ; x0]``: ``L .. 2L - 1``."""
    return torch.arange(seq_len, 2 * seq_len)


def next_token_targets(x0: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask) [B, L] of a next-token loss: the output at i predicts x0[i + 1].

    The last column has no target (mask False); a target must itself be a loss position.
    """
    targets = torch.cat([x0[:, 1:], torch.zeros_like(x0[:, :1])], dim=1)
    mask = torch.cat([loss_mask[:, 1:].to(torch.bool), torch.zeros_like(loss_mask[:, :1], dtype=torch.bool)],
                     dim=1)
    return targets, mask
