"""Per-token cross-entropy and argmax-correctness on vocabulary-parallel logits (fp32).

Logits stay split over tensor-parallel ranks (never gathered); Megatron's
``vocab_parallel_cross_entropy`` gives the loss and one max- and one sum-reduction over the TP group
give whether the target has the largest logit (the masked-token accuracy).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel


def ce_and_correct(logits: torch.Tensor, targets: torch.Tensor):
    """logits [b, s, V/tp] (this rank's vocabulary slice), targets [b, s] -> (ce [b, s] fp32, correct [b, s] bool)."""
    logits = logits.float()
    ce = tensor_parallel.vocab_parallel_cross_entropy(logits.transpose(0, 1).contiguous(),
                                                      targets.transpose(0, 1).contiguous()).transpose(0, 1)
    with torch.no_grad():
        group = parallel_state.get_tensor_model_parallel_group()
        vocab_local = logits.shape[-1]
        start = parallel_state.get_tensor_model_parallel_rank() * vocab_local
        local_max = logits.max(dim=-1).values
        in_range = (targets >= start) & (targets < start + vocab_local)
        local_target = torch.where(in_range, targets - start, torch.zeros_like(targets))
        target_logit = logits.gather(-1, local_target.unsqueeze(-1)).squeeze(-1)
        target_logit = torch.where(in_range, target_logit, torch.zeros_like(target_logit))
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            torch.distributed.all_reduce(local_max, op=torch.distributed.ReduceOp.MAX, group=group)
            torch.distributed.all_reduce(target_logit, group=group)
        correct = target_logit >= local_max
    return ce, correct
