"""Label alignments and the causal-clean-stream mask against brute-force definitions."""

import itertools

import pytest
import torch

from megatron_dllm.diffusion import alignment, masks


def _closure(mask: torch.Tensor, layers: int) -> torch.Tensor:
    """What each row can depend on after ``layers`` attention layers (self included)."""
    reach = torch.eye(mask.shape[0], dtype=torch.bool) | mask
    out = reach.clone()
    for _ in range(layers - 1):
        out = (out.float() @ reach.float()) > 0
    return out


@pytest.mark.parametrize("L,block", [(8, 1), (8, 2), (12, 4), (16, 16)])
def test_token_shift_rows_follow_the_definition(L, block):
    rows = alignment.token_shift_rows(L, block, two_streams=True)
    for i in range(1, L):
        expected = L + i - 1 if i % block == 0 else i - 1  # block start: the clean stream
        assert int(rows[i]) == expected
    one = alignment.token_shift_rows(L, block, two_streams=False)
    assert one[1:].tolist() == list(range(L - 1))


@pytest.mark.parametrize("kind", ["block_diffusion", "block_diffusion_causal_clean"])
@pytest.mark.parametrize("L,block", [(8, 1), (8, 2), (12, 4)])
def test_shifted_rows_never_reach_the_clean_token_they_predict(kind, L, block):
    reach = _closure(masks.dense_mask(kind, L, block), layers=4)
    rows = alignment.token_shift_rows(L, block, two_streams=True)
    for i in range(1, L):
        seen_clean = reach[rows[i], L:].nonzero().flatten().tolist()
        assert all(j < i for j in seen_clean), (i, seen_clean)
        if i % block == 0:  # a block start sees exactly the clean prefix
            assert seen_clean == list(range(i)) and not reach[rows[i], :L].any()


def test_token_shift_at_block_one_is_causal_on_the_clean_stream():
    L = 10
    reach = masks.dense_mask("block_diffusion", L, 1)
    rows = alignment.token_shift_rows(L, 1, two_streams=True)
    for i in range(1, L):
        assert reach[rows[i], L:].nonzero().flatten().tolist() == list(range(i))


@pytest.mark.parametrize("L,block", [(8, 2), (12, 4), (6, 6)])
def test_causal_clean_mask_brute_force(L, block):
    got = masks.dense_mask("block_diffusion_causal_clean", L, block)
    for q, k in itertools.product(range(2 * L), repeat=2):
        qn, kn = q < L, k < L
        qb, kb = (q % L) // block, (k % L) // block
        if qn and kn:
            want = qb == kb
        elif qn:
            want = qb > kb
        elif kn:
            want = False
        else:
            want = k <= q
        assert bool(got[q, k]) == want, (q, k)


def test_causal_clean_mask_with_documents():
    L, block = 8, 4
    docs = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    got = masks.dense_mask("block_diffusion_causal_clean", L, block, docs)
    plain = masks.dense_mask("block_diffusion_causal_clean", L, block)
    same = docs[torch.arange(2 * L) % L]
    assert torch.equal(got, plain & (same[:, None] == same[None, :]))


def test_next_token_targets_and_shift_loss_mask():
    x0 = torch.tensor([[5, 6, 7, 8]])
    lm = torch.tensor([[True, True, False, True]])
    targets, mask = alignment.next_token_targets(x0, lm)
    assert targets[0, :3].tolist() == [6, 7, 8]
    assert mask.tolist() == [[True, False, True, False]]
    assert alignment.token_shift_loss_mask(lm).tolist() == [[False, True, False, True]]


def test_rows_reject_a_block_that_does_not_divide():
    with pytest.raises(ValueError, match="must divide"):
        alignment.token_shift_rows(10, 4, two_streams=True)
