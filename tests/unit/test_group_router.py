"""The released LLaDA2 / BailingMoeV2 group rule (groups scored by their top-2) vs Megatron's top-(k / kept)."""

import itertools

import pytest
import torch
from megatron.core.transformer.moe.moe_utils import group_limited_topk

from megatron_dllm.model.group_router import released_group_limited_topk


def _brute_force(scores, topk, num_groups, group_topk):
    """Released rule by enumeration: best set of kept groups by the sum of each group's top-2, then top-k."""
    tokens, experts = scores.shape
    size = experts // num_groups
    out = []
    for t in range(tokens):
        group_score = [scores[t, g * size:(g + 1) * size].sort(descending=True).values[:2].sum()
                       for g in range(num_groups)]
        best = max(itertools.combinations(range(num_groups), group_topk),
                   key=lambda kept: sum(group_score[g] for g in kept))
        allowed = [e for g in best for e in range(g * size, (g + 1) * size)]
        chosen = sorted(allowed, key=lambda e: -scores[t, e])[:topk]
        out.append(sorted(chosen))
    return out


@pytest.mark.parametrize("topk,num_groups,group_topk,experts", [
    (2, 4, 2, 8),     # tiny-moe: Megatron scores groups by their top 1
    (4, 4, 2, 16),    # top 2 either way
    (8, 8, 4, 64),    # LLaDA2.0-mini's 8 of 256 in 8 groups, 4 kept (fewer experts)
    (1, 4, 1, 8),     # top-1: Megatron scores groups by their top 1
    (6, 4, 2, 16),    # Megatron: top 3
])
def test_released_rule_matches_brute_force(topk, num_groups, group_topk, experts):
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(64, experts, generator=gen, dtype=torch.float64)
    values, indices = released_group_limited_topk(scores, topk, num_groups, group_topk)
    assert [sorted(row) for row in indices.tolist()] == _brute_force(scores, topk, num_groups, group_topk)
    assert torch.equal(values, scores.gather(1, indices))


def test_megatron_rule_differs_exactly_when_k_over_kept_groups_is_not_two():
    gen = torch.Generator().manual_seed(1)
    for topk, num_groups, group_topk, experts, same in [(2, 4, 2, 8, False), (1, 4, 1, 8, False),
                                                       (6, 4, 2, 16, False), (4, 4, 2, 16, True),
                                                       (8, 8, 4, 64, True)]:
        scores = torch.rand(256, experts, generator=gen)
        ours = released_group_limited_topk(scores, topk, num_groups, group_topk)[1].sort(dim=-1).values
        mcore = group_limited_topk(scores, topk, 256, experts, num_groups, group_topk)[1].sort(dim=-1).values
        assert torch.equal(ours, mcore) == same, (topk, num_groups, group_topk)


def test_groups_that_do_not_divide_the_experts_are_refused():
    with pytest.raises(ValueError, match="do not split"):
        released_group_limited_topk(torch.rand(2, 10), 2, 4, 2)


def test_presets_with_groups_route_as_released_except_tiny_moe():
    """LLaDA2.0-mini / -flash keep k // kept == 2 (stock routing is the released rule); tiny-moe does not
    (2 // 2 = 1): it routes as the released code only with ReleasedGroupTopKRouter in its spec."""
    from megatron_dllm.model.presets import PRESETS

    differs = sorted(name for name, cfg in PRESETS.items()
                     if (cfg.moe_router_num_groups or 1) > 1
                     and cfg.moe_router_topk // cfg.moe_router_group_topk != 2)
    grouped = sorted(name for name, cfg in PRESETS.items() if (cfg.moe_router_num_groups or 1) > 1)
    assert differs == ["tiny-moe"]
    assert grouped == ["llada2.0-flash", "llada2.0-mini", "tiny-moe"]
