"""DiffusionCoreAttention honours arbitrary masks on every backend present (CPU: sdpa, flex forward)."""

import warnings

import pytest
import torch

warnings.filterwarnings("ignore")
from megatron.core.transformer.enums import AttnMaskType  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

from megatron_dllm.model.core_attention import DiffusionCoreAttention, resolve_backend  # noqa: E402


def _config(heads=4, groups=2, head_dim=8):
    return TransformerConfig(
        num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads,
        num_query_groups=groups, kv_channels=head_dim, use_cpu_initialization=True,
        attention_dropout=0.0, hidden_dropout=0.0,
    )


def _reference(q, k, v, allowed):
    """float64 attention from the definition: q [s,b,h,d], k/v [s,b,g,d], allowed [b,sq,sk]."""
    q, k, v = (x.double() for x in (q, k, v))
    rep = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("qbhd,kbhd->bhqk", q, k) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    probs = scores.softmax(-1)
    out = torch.einsum("bhqk,kbhd->qbhd", probs, v)
    return out.reshape(out.shape[0], out.shape[1], -1)


def _random_case(seed, sq=24, b=2, heads=4, groups=2, d=8):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, b, heads, d, generator=gen)
    k = torch.randn(sq, b, groups, d, generator=gen)
    v = torch.randn(sq, b, groups, d, generator=gen)
    allowed = torch.rand(b, sq, sq, generator=gen) < 0.3
    allowed[:, :3] = False                       # rows that only see themselves
    allowed |= torch.eye(sq, dtype=torch.bool)   # every row sees at least itself
    return q, k, v, allowed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sdpa_matches_float64_reference(seed):
    q, k, v, allowed = _random_case(seed)
    attn = DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="sdpa")
    out = attn(q, k, v, allowed)
    torch.testing.assert_close(out.double(), _reference(q, k, v, allowed), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_layout", ["2d", "3d", "4d"])
def test_mask_layouts_are_equivalent(mask_layout):
    q, k, v, allowed = _random_case(5, b=1)
    attn = DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="sdpa")
    mask = {"2d": allowed[0], "3d": allowed, "4d": allowed[:, None]}[mask_layout]
    torch.testing.assert_close(attn(q, k, v, mask).double(), _reference(q, k, v, allowed), rtol=1e-5, atol=1e-6)


def test_invisible_key_perturbation_leaves_query_bit_identical():
    q, k, v, allowed = _random_case(7)
    attn = DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="sdpa")
    base = attn(q, k, v, allowed)
    # key 10 of batch row 0: perturb it and check every query that may not see it
    k2, v2 = k.clone(), v.clone()
    k2[10, 0] += 5.0
    v2[10, 0] -= 3.0
    out = attn(q, k2, v2, allowed)
    hidden = ~allowed[0, :, 10]
    assert hidden.any() and (~hidden).any()
    assert torch.equal(out[hidden, 0], base[hidden, 0])
    assert not torch.equal(out[~hidden, 0], base[~hidden, 0])
    assert torch.equal(out[:, 1], base[:, 1])


def test_gradients_match_reference():
    q, k, v, allowed = _random_case(3)
    attn = DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="sdpa")
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_leaves = [x.double().clone().requires_grad_() for x in (q, k, v)]
    weight = torch.randn(24, 2, 32, generator=torch.Generator().manual_seed(9))
    (attn(*leaves, allowed) * weight).sum().backward()
    (_reference(*ref_leaves, allowed) * weight.double()).sum().backward()
    for got, ref in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad.double(), ref.grad, rtol=1e-4, atol=1e-5)


def test_flex_forward_matches_reference_on_cpu():
    from torch.nn.attention.flex_attention import create_block_mask

    q, k, v, allowed = _random_case(11, sq=32, b=1)
    table = allowed[0]

    def mask_mod(b, h, qi, ki):
        return table[qi, ki]

    block_mask = create_block_mask(mask_mod, None, None, 32, 32, device="cpu", BLOCK_SIZE=16)
    attn = DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="flex")
    out = attn(q, k, v, block_mask)
    torch.testing.assert_close(out.double(), _reference(q, k, v, allowed), rtol=1e-4, atol=1e-5)


def test_none_mask_is_an_error_for_dllm_layers():
    q, k, v, _ = _random_case(0)
    attn = DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="sdpa")
    with pytest.raises(ValueError, match="refusing to fall back to a causal mask"):
        attn(q, k, v, None)


def test_causal_layer_without_mask_is_causal():
    q, k, v, _ = _random_case(4)
    attn = DiffusionCoreAttention(_config(), 1, AttnMaskType.causal, "self", backend="sdpa")
    causal = torch.ones(24, 24, dtype=torch.bool).tril().expand(2, 24, 24)
    torch.testing.assert_close(attn(q, k, v, None).double(), _reference(q, k, v, causal), rtol=1e-5, atol=1e-6)


def test_backend_mismatch_errors():
    q, k, v, allowed = _random_case(0)
    flex = DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="flex")
    with pytest.raises(ValueError, match="needs a FlexAttention BlockMask"):
        flex(q, k, v, allowed)
    sdpa = DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="sdpa")
    with pytest.raises(TypeError, match="bool tensor"):
        sdpa(q, k, v, allowed.float())


def test_context_parallel_misuse_is_a_clear_error():
    import dataclasses

    q, k, v, allowed = _random_case(0)
    config = dataclasses.replace(_config(), context_parallel_size=2)
    with pytest.raises(ValueError, match="attention backend 'te' under context parallelism"):
        DiffusionCoreAttention(config, 1, AttnMaskType.arbitrary, "self", backend="te")
    attn = DiffusionCoreAttention(config, 1, AttnMaskType.arbitrary, "self", backend="sdpa")
    with pytest.raises(ValueError, match="no CP split set; call the model with cp_split="):
        attn(q, k, v, allowed)
    causal = DiffusionCoreAttention(config, 1, AttnMaskType.causal, "self", backend="sdpa")
    with pytest.raises(ValueError, match="context parallelism needs an explicit attention mask"):
        causal(q, k, v, None)


def test_backend_resolution():
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend("auto", "cuda") == "flex"
    with pytest.raises(ValueError, match="unknown attention backend 'cudnn'"):
        resolve_backend("cudnn", "cpu")


def test_te_backend_without_te_says_how_to_fix():
    from megatron_dllm.model.core_attention import te_available

    if te_available():
        pytest.skip("Transformer Engine is installed here; the GPU suite covers the te backend")
    with pytest.raises(RuntimeError, match=r"install megatron_dllm\[gpu\]"):
        DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="te")


def _bd_doc_mask(L, block, seed):
    from megatron_dllm.diffusion import masks

    gen = torch.Generator().manual_seed(seed)
    docs = (torch.rand(1, L, generator=gen) < 0.01).long().cumsum(-1)
    return masks.block_diffusion_mask(L, block, docs)  # [1, 2L, 2L]


@pytest.mark.parametrize("seed", [0, 1])
def test_block_sparse_cpu_path_matches_reference_and_skips_tiles(seed):
    from megatron_dllm.model import sparse_sdpa

    L = 384  # 2L = 768: three 256-tiles, the sparse path is taken
    allowed = _bd_doc_mask(L, 32, seed)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2 * L, 1, 4, 8, generator=gen)
    k = torch.randn(2 * L, 1, 2, 8, generator=gen)
    v = torch.randn(2 * L, 1, 2, 8, generator=gen)
    attn = DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="sdpa")
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_leaves = [x.double().clone().requires_grad_() for x in (q, k, v)]
    out = attn(*leaves, allowed)
    torch.testing.assert_close(out.double(), _reference(q, k, v, allowed), rtol=1e-5, atol=1e-6)
    weight = torch.randn(out.shape, generator=gen)
    (out * weight).sum().backward()
    (_reference(*ref_leaves, allowed) * weight.double()).sum().backward()
    for got, ref in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad.double(), ref.grad, rtol=1e-4, atol=1e-5)
    plan = sparse_sdpa.plans_for(allowed[:, None], torch.float32)[0]
    kept = sum(b - a for ranges, _ in plan for a, b in ranges)
    assert kept < (2 * L) * len(plan)  # some key tiles were skipped
    # a key hidden from a query tile leaves those queries bit-identical
    k2 = k.clone()
    k2[0] += 3.0  # noisy position 0: only block 0 of the noisy half may see it
    out2 = attn(q, k2, v, allowed)
    hidden = ~allowed[0, :, 0]
    assert torch.equal(out2[hidden], out.detach()[hidden])


def test_block_sparse_path_for_some_query_rows_against_all_keys():
    """A context-parallel rank's view: its 256 query rows (two 128-row chunks from far apart) against
    all 2L keys; the tiled path equals the same rows of the one-rank output, gradients included."""
    from megatron_dllm.model import sparse_sdpa

    L = 384
    allowed = _bd_doc_mask(L, 32, 3)[0]  # [2L, 2L]
    rows = torch.cat([torch.arange(128, 256), torch.arange(512, 640)])
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2 * L, 1, 4, 8, generator=gen)
    k = torch.randn(2 * L, 1, 2, 8, generator=gen)
    v = torch.randn(2 * L, 1, 2, 8, generator=gen)
    attn = DiffusionCoreAttention(_config(), 1, AttnMaskType.arbitrary, "self", backend="sdpa")
    local_mask = allowed[rows][None].contiguous()  # [1, 256, 2L]
    assert sparse_sdpa.usable(local_mask[:, None], q[rows].permute(1, 2, 0, 3), k.permute(1, 2, 0, 3))
    leaves = [q[rows].clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_()]
    out = attn(*leaves, local_mask)
    full = [x.double().clone().requires_grad_() for x in (q, k, v)]
    ref = _reference(*full, allowed[None])[rows]
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    weight = torch.randn(out.shape, generator=gen)
    (out * weight).sum().backward()
    (ref * weight.double()).sum().backward()
    torch.testing.assert_close(leaves[0].grad.double(), full[0].grad[rows], rtol=1e-4, atol=1e-5)
    for got, want in zip(leaves[1:], full[1:]):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-5)


def test_block_sparse_path_with_per_row_documents():
    from megatron_dllm.diffusion import masks

    L = 256
    gen = torch.Generator().manual_seed(5)
    docs = (torch.rand(2, L, generator=gen) < 0.02).long().cumsum(-1)
    allowed = masks.block_diffusion_mask(L, 16, docs)  # [2, 2L, 2L]
    q = torch.randn(2 * L, 2, 4, 8, generator=gen)
    k = torch.randn(2 * L, 2, 4, 8, generator=gen)
    v = torch.randn(2 * L, 2, 4, 8, generator=gen)
    attn = DiffusionCoreAttention(_config(4, 4, 8), 1, AttnMaskType.arbitrary, "self", backend="sdpa")
    torch.testing.assert_close(attn(q, k, v, allowed).double(), _reference(q, k, v, allowed), rtol=1e-5, atol=1e-6)
