"""Attention masks: equality with brute-force loops written from the definitions, FlexAttention parity."""

import warnings

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from megatron_dllm.diffusion import masks as M


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def random_docs(L, gen, max_docs=4):
    """Document ids [L] with random boundaries (blocks may straddle them)."""
    n_cuts = int(torch.randint(0, max_docs, (1,), generator=gen))
    cuts = torch.randperm(L - 1, generator=gen)[:n_cuts] + 1
    starts = torch.zeros(L, dtype=torch.int64)
    starts[cuts] = 1
    return torch.cumsum(starts, 0)


# ---- brute-force references, one (query, key) pair at a time, straight from the definitions ----


def ref_block_diffusion(L, bs, docs=None):
    out = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for i in range(2 * L):
        for j in range(2 * L):
            qi_noisy, kj_noisy = i < L, j < L
            pi, pj = (i if qi_noisy else i - L), (j if kj_noisy else j - L)
            bi, bj = pi // bs, pj // bs
            if qi_noisy and kj_noisy:
                ok = bi == bj
            elif qi_noisy and not kj_noisy:
                ok = bi > bj
            elif not qi_noisy and not kj_noisy:
                ok = bi >= bj
            else:
                ok = False
            if docs is not None and docs[pi] != docs[pj]:
                ok = False
            out[i, j] = ok
    return out


def ref_bidirectional(L, docs=None):
    out = torch.ones(L, L, dtype=torch.bool)
    if docs is not None:
        for i in range(L):
            for j in range(L):
                out[i, j] = bool(docs[i] == docs[j])
    return out


def ref_block_causal(L, bs, docs=None):
    out = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j in range(L):
            out[i, j] = (j // bs <= i // bs) and (docs is None or bool(docs[i] == docs[j]))
    return out


def cases(n, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        L = int(torch.randint(2, 25, (1,), generator=gen))
        ds = divisors(L)
        bs = ds[int(torch.randint(0, len(ds), (1,), generator=gen))]
        yield L, bs, random_docs(L, gen)


def test_block_diffusion_small_example():
    # L = 4, block 2: hand-written from the quadrant table of METHOD.md 3.3
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(M.block_diffusion_mask(4, 2), expected)


def test_masks_match_brute_force_random():
    for L, bs, docs in cases(25, seed=0):
        assert torch.equal(M.block_diffusion_mask(L, bs), ref_block_diffusion(L, bs)), (L, bs)
        assert torch.equal(M.block_diffusion_mask(L, bs, docs), ref_block_diffusion(L, bs, docs)), \
            (L, bs, docs)
        assert torch.equal(M.bidirectional_mask(L, docs), ref_bidirectional(L, docs))
        assert torch.equal(M.bidirectional_mask(L), ref_bidirectional(L))
        assert torch.equal(M.block_causal_mask(L, bs, docs), ref_block_causal(L, bs, docs))
        assert torch.equal(M.block_causal_mask(L, bs), ref_block_causal(L, bs))


def test_straddling_block_is_split_by_documents():
    # L = 8, block 4, document boundary inside block 0 (after position 1)
    docs = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])
    m = M.block_diffusion_mask(8, 4, docs)
    assert m[0, 1] and not m[0, 2]          # xt block 0 split in two
    assert not m[4, 8 + 0] and m[4, 8 + 2]  # xt block 1 sees only the clean positions of its document
    assert torch.equal(m, ref_block_diffusion(8, 4, docs))


def test_batched_documents_give_per_row_masks():
    gen = torch.Generator().manual_seed(1)
    L, bs = 12, 3
    docs = torch.stack([random_docs(L, gen) for _ in range(3)])
    for kind, ref in (("block_diffusion", lambda d: ref_block_diffusion(L, bs, d)),
                      ("bidirectional", lambda d: ref_bidirectional(L, d)),
                      ("block_causal", lambda d: ref_block_causal(L, bs, d))):
        dense = M.dense_mask(kind, L, bs, docs)
        n = 2 * L if kind == "block_diffusion" else L
        assert dense.shape == (3, n, n)
        for b in range(3):
            assert torch.equal(dense[b], ref(docs[b])), (kind, b)


def test_reductions_of_the_bd_mask():
    L = 8
    m = M.block_diffusion_mask(L, L)
    assert m[:L, :L].all() and not m[:L, L:].any()      # block = L: MDLM, clean half unreachable
    m1 = M.block_diffusion_mask(L, 1)
    assert torch.equal(m1[:L, :L], torch.eye(L, dtype=torch.bool))
    assert torch.equal(m1[:L, L:], torch.ones(L, L, dtype=torch.bool).tril(-1))  # strictly earlier
    assert torch.equal(m1[L:, L:], torch.ones(L, L, dtype=torch.bool).tril())    # causal
    assert torch.equal(M.block_causal_mask(L, 1), torch.ones(L, L, dtype=torch.bool).tril())


def test_document_ids_from_eod():
    eod = 9
    tokens = torch.tensor([[5, 9, 3, 4, 9, 9, 1], [9, 1, 2, 3, 4, 5, 6]])
    expected = torch.tensor([[0, 0, 1, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1]])
    assert torch.equal(M.document_ids_from_eod(tokens, eod), expected)


def test_cache_returns_same_object_and_keys_on_documents():
    M.clear_mask_cache()
    docs_a = torch.tensor([0, 0, 1, 1])
    a1 = M.block_diffusion_mask(4, 2, docs_a)
    a2 = M.block_diffusion_mask(4, 2, docs_a.clone())
    assert a1 is a2
    b = M.block_diffusion_mask(4, 2, torch.tensor([0, 0, 0, 1]))
    assert b is not a1 and not torch.equal(a1, b)
    assert M.block_diffusion_mask(4, 1, docs_a) is not a1


def test_invalid_arguments():
    message = r"block_diffusion mask: block_size must be a positive divisor of seq_len=6, got 4"
    with pytest.raises(ValueError, match=message):
        M.block_diffusion_mask(6, 4)
    with pytest.raises(ValueError, match=r"unknown mask kind 'causal'"):
        M.dense_mask("causal", 4, 1)
    with pytest.raises(ValueError, match=r"document_ids must be \[L\] or \[B, L\] with L=4"):
        M.bidirectional_mask(4, torch.zeros(5, dtype=torch.int64))


# ---- FlexAttention BlockMask materialiser ----


def tile_any(dense, tile):
    """[..., N, N] bool -> [..., ceil(N/tile), ceil(N/tile)]: tile has an allowed pair."""
    n = dense.shape[-1]
    pad = (-n) % tile
    d = F.pad(dense, (0, pad, 0, pad))
    t = d.shape[-1] // tile
    return d.reshape(*d.shape[:-2], t, tile, t, tile).any(-1).any(-2)


@pytest.mark.parametrize("kind", M.KINDS)
def test_flex_block_mask_agrees_with_dense(kind):
    from torch.nn.attention.flex_attention import flex_attention

    gen = torch.Generator().manual_seed(2)
    L, bs, tile = 20, 4, 8   # 2L = 40 is not a multiple of the tile: exercises padding
    docs = torch.stack([random_docs(L, gen) for _ in range(2)])
    for d in (None, docs[0], docs):
        dense = M.dense_mask(kind, L, bs, d)
        bm = M.flex_block_mask(kind, L, bs, d, tile_size=tile)
        want = tile_any(dense if dense.dim() == 3 else dense[None], tile)
        assert torch.equal(bm.to_dense()[:, 0].bool(), want)
        # attention outputs in forward on CPU: flex with the BlockMask vs SDPA with the dense mask
        n = dense.shape[-1]
        B = 2
        q, k, v = (torch.randn(B, 2, n, 8, generator=gen, dtype=torch.float64) for _ in range(3))
        # flex_attention compiles itself: dynamo on, whatever an earlier test in this process set
        # (the CPU shims turn it off process-wide)
        with warnings.catch_warnings(), torch._dynamo.config.patch(disable=False):
            warnings.simplefilter("ignore")
            out_flex = flex_attention(q, k, v, block_mask=bm)
        attn = dense[:, None] if dense.dim() == 3 else dense
        out_sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=attn)
        torch.testing.assert_close(out_flex, out_sdpa, rtol=1e-10, atol=1e-10)


def test_flex_block_mask_is_cached():
    a = M.flex_block_mask("block_diffusion", 8, 2, tile_size=8)
    assert M.flex_block_mask("block_diffusion", 8, 2, tile_size=8) is a


@pytest.mark.parametrize("kind", ["block_diffusion", "bidirectional", "block_causal"])
def test_query_rows_are_the_rows_of_the_full_mask(kind):
    """A context-parallel rank's mask: its rows of the one-rank mask, dense and FlexAttention."""
    from megatron_dllm.diffusion.masks import dense_mask, flex_block_mask, mask_length

    L, block = 32, 4
    size = None if kind == "bidirectional" else block
    docs = torch.tensor([[0] * 10 + [1] * 22, [0] * 20 + [1] * 12])
    rows = torch.tensor([3, 17, 0, mask_length(kind, L) - 1, 8])
    full = dense_mask(kind, L, size, docs)
    assert torch.equal(dense_mask(kind, L, size, docs, query_rows=rows), full[:, rows])
    assert torch.equal(dense_mask(kind, L, size, docs[0], query_rows=rows), dense_mask(kind, L, size, docs[0])[rows])
    flex = flex_block_mask(kind, L, size, docs, tile_size=8, query_rows=rows)
    assert flex.shape[-2:] == (len(rows), mask_length(kind, L))
    q = torch.arange(len(rows)).view(1, -1, 1)
    kv = torch.arange(mask_length(kind, L)).view(1, 1, -1)
    got = flex.mask_mod(torch.arange(2).view(-1, 1, 1), None, q, kv)
    assert torch.equal(got, full[:, rows])
    with pytest.raises(ValueError, match="query_rows must index the 64 positions"
                       if kind == "block_diffusion" else "query_rows must index the 32 positions"):
        dense_mask(kind, L, size, docs, query_rows=torch.tensor([mask_length(kind, L)]))
