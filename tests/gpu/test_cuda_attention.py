"""CUDA backends of DiffusionCoreAttention against a float64 reference (need a GPU; skipped without).

Run on a GPU machine: ``pytest -q tests/gpu``.
"""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run tests/gpu on a GPU machine)"),
]


def _case(L=256, block=32, heads=8, groups=2, d=64, seed=0):
    from megatron_dllm.diffusion import masks

    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2 * L, 1, heads, d, generator=gen)
    k = torch.randn(2 * L, 1, groups, d, generator=gen)
    v = torch.randn(2 * L, 1, groups, d, generator=gen)
    docs = (torch.rand(1, L, generator=gen) < 0.02).long().cumsum(-1)
    dense = masks.block_diffusion_mask(L, block, docs)
    return q, k, v, docs, dense


def _config(heads, groups, d):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(num_layers=1, hidden_size=heads * d, num_attention_heads=heads,
                             num_query_groups=groups, kv_channels=d, attention_dropout=0.0,
                             hidden_dropout=0.0, bf16=False)


def _reference(q, k, v, allowed):
    q, k, v = (x.double() for x in (q, k, v))
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    s = torch.einsum("qbhd,kbhd->bhqk", q, k) / q.shape[-1] ** 0.5
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    out = torch.einsum("bhqk,kbhd->qbhd", s.softmax(-1), v)
    return out.reshape(out.shape[0], out.shape[1], -1)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_cuda_backend_matches_reference(backend):
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_dllm.diffusion import masks
    from megatron_dllm.model.core_attention import DiffusionCoreAttention

    q, k, v, docs, dense = _case()
    attn = DiffusionCoreAttention(_config(8, 2, 64), 1, AttnMaskType.arbitrary, "self", backend=backend).cuda()
    mask = (masks.flex_block_mask("block_diffusion", 256, 32, docs, device="cuda")
            if backend == "flex" else dense.cuda())
    leaves = [x.cuda().requires_grad_() for x in (q, k, v)]
    out = attn(*leaves, mask)
    torch.testing.assert_close(out.double().cpu(), _reference(q, k, v, dense), rtol=2e-3, atol=2e-3)
    out.sum().backward()  # FlexAttention trains on CUDA
    assert all(torch.isfinite(x.grad).all() for x in leaves)


def test_te_backend_matches_reference():
    from megatron_dllm.model.core_attention import te_available

    if not te_available():
        pytest.skip("Transformer Engine is not installed on this GPU machine")
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_dllm.model.core_attention import DiffusionCoreAttention

    q, k, v, _, dense = _case()
    attn = DiffusionCoreAttention(_config(8, 2, 64), 1, AttnMaskType.arbitrary, "self", backend="te").cuda()
    out = attn(q.cuda().bfloat16(), k.cuda().bfloat16(), v.cuda().bfloat16(), dense.cuda())
    torch.testing.assert_close(out.double().cpu(), _reference(q, k, v, dense), rtol=3e-2, atol=3e-2)


def test_flex_rows_of_a_context_parallel_rank_match_reference():
    """A CP rank's view on CUDA: its balanced rows of the BD BlockMask (query_rows) against all keys."""
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_dllm.diffusion import masks
    from megatron_dllm.diffusion.context_split import row_work, split_rows
    from megatron_dllm.model.core_attention import DiffusionCoreAttention

    q, k, v, docs, dense = _case()
    rows = split_rows(512, 2, work=row_work("block_diffusion", 256, 32, docs[0]))[1]
    attn = DiffusionCoreAttention(_config(8, 2, 64), 1, AttnMaskType.arbitrary, "self", backend="flex").cuda()
    mask = masks.flex_block_mask("block_diffusion", 256, 32, docs, device="cuda", query_rows=rows)
    leaves = [q[rows].cuda().requires_grad_(), k.cuda().requires_grad_(), v.cuda().requires_grad_()]
    out = attn(*leaves, mask)
    torch.testing.assert_close(out.double().cpu(), _reference(q, k, v, dense)[rows], rtol=2e-3, atol=2e-3)
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in leaves)
