"""Group-limited MoE routing as the released LLaDA2.0 / BailingMoeV2 code does it.

Both rules keep ``group_topk`` of ``num_groups`` expert groups per token, then pick the top ``k`` experts
inside the kept groups. They differ in how a group is scored:

* released ``modeling_llada2_moe.py`` / ``modeling_bailing_moe_v2.py`` (and SGLang): the sum of the
  group's **top-2** selection scores (``sigmoid(logit) + expert_bias``), whatever ``k`` is;
* Megatron-Core 0.16.1 (``moe_utils.group_limited_topk``): the sum of its top ``k // group_topk``.

They agree when ``k // group_topk == 2`` (LLaDA2.0-mini / -flash, Ling-mini / -flash-2.0: 8 // 4) and
differ otherwise (the ``tiny-moe`` preset: 2 // 2 = 1). :class:`ReleasedGroupTopKRouter` is a
Megatron-Core ``TopKRouter`` that scores groups by the top 2, so a model built with it routes as the
released code for every ``k``. ``model/specs.py`` selects it for every MoE model the project builds,
through the MoE layer spec (``MoESubmodules.router``); the stock router class is not touched.

The override goes through the one seam ``TopKRouter.routing`` offers for the top-k step
(``topk_routing_with_score_function(..., router_replay=...)``): the router's ``router_replay``
attribute is an adapter whose ``get_replay_topk`` computes the released rule (and forwards to a real
``RouterReplay`` when routing replay is enabled). Everything else (score function, expert bias,
normalisation, scaling, aux losses, token dropping) is the stock code.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from megatron.core.transformer.moe.router import TopKRouter

RELEASED_GROUP_SCORE_EXPERTS = 2  # released LLaDA2 / BailingMoeV2 code: topk(2) per group, fixed


def released_group_limited_topk(scores: torch.Tensor, topk: int, num_groups: int, group_topk: int,
                                group_score_experts: int = RELEASED_GROUP_SCORE_EXPERTS
                                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) ``[T, topk]`` of the top ``topk`` of ``scores [T, E]`` inside the kept groups.

    A group's score is the sum of its top ``group_score_experts`` scores; the ``group_topk`` best groups
    are kept (the rest masked to -inf), as the released code does. Same return contract as Megatron's
    ``group_limited_topk`` (values of ``scores`` at the chosen indices).
    """
    tokens, experts = scores.shape
    if experts % num_groups:
        raise ValueError(f"{experts} experts do not split into {num_groups} groups")
    per_group = scores.view(tokens, num_groups, experts // num_groups)
    count = min(group_score_experts, per_group.shape[-1])
    group_scores = per_group.topk(count, dim=-1)[0].sum(dim=-1)
    kept = group_scores.topk(group_topk, dim=-1, sorted=False)[1]
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
    keep = keep.unsqueeze(-1).expand_as(per_group).reshape(tokens, experts)
    masked = scores.masked_fill(~keep, float("-inf"))
    indices = masked.topk(topk, dim=-1)[1]
    return scores.gather(1, indices), indices


class _ReleasedTopK:
    """Stands where ``TopKRouter.routing`` passes ``router_replay``: computes the released group rule.

    ``inner``: the router's real ``RouterReplay`` (routing replay enabled) or None; with one, recording
    and replaying go through it and fresh decisions use the released rule.
    """

    def __init__(self, inner=None):
        self.inner = inner

    @staticmethod
    def compute(scores, topk, num_groups=None, group_topk=None):
        if group_topk:
            return released_group_limited_topk(scores, topk, num_groups, group_topk)
        return torch.topk(scores, k=topk, dim=1)

    def get_replay_topk(self, scores, topk, num_groups=None, group_topk=None, default_compute_topk=None):
        if self.inner is not None:
            return self.inner.get_replay_topk(scores, topk, num_groups, group_topk, self.compute)
        return self.compute(scores, topk, num_groups, group_topk)


class ReleasedGroupTopKRouter(TopKRouter):
    """Megatron-Core ``TopKRouter`` whose group-limited top-k scores a group by its top-2 experts.

    Identical to the stock router when no groups are set or ``topk // group_topk == 2``. Refuses
    ``moe_router_fusion`` (Transformer Engine's fused top-k implements Megatron's rule and bypasses
    the seam used here).
    """

    def __init__(self, config, pg_collection: Optional[object] = None):
        if getattr(config, "moe_router_fusion", False) and getattr(config, "moe_router_group_topk", None):
            raise ValueError("ReleasedGroupTopKRouter: moe_router_fusion computes Megatron's group score "
                             "(top k / group_topk); turn it off to route as the released LLaDA2 code")
        super().__init__(config=config, pg_collection=pg_collection)
        self.router_replay = _ReleasedTopK(self.router_replay)
