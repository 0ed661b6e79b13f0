"""The SFT objective against brute-force definitions on a tiny model (tests/distributed/sft_workers.py):
the prompt is never masked, a complementary pair masks every response token exactly once, the mask
follows the dataset's documents (not EOD), and the loss (and CAP term) equal float64 recomputations."""

import pytest
import torch

from tests.distributed import sft_workers as S
from tests.distributed.harness import run_ranks


@pytest.fixture(scope="module")
def sft():
    return run_ranks(S.sft_worker, 1, timeout=300)[0]


def test_prompt_never_masked_and_pair_covers_each_response_token_once(sft):
    x = sft["inputs"]
    x0, loss = sft["ref"]["x0"], sft["ref"]["loss_mask"]
    B = x0.shape[0]
    assert x["tokens"].shape == (2 * B, 2 * S.L)
    xt, clean = x["tokens"][:, :S.L], x["tokens"][:, S.L:]
    assert torch.equal(clean, torch.cat([x0, x0]))                      # the clean half is x0
    both = torch.cat([loss, loss])
    assert torch.equal(xt[~both], torch.cat([x0, x0])[~both])           # prompt / fill never masked
    assert not bool(x["noise_mask"][~both].any())
    first, second = x["noise_mask"][:B], x["noise_mask"][B:]
    assert not bool((first & second).any())                              # disjoint
    assert torch.equal(first | second, loss)                             # cover every response token
    assert torch.equal(xt == S.MASK, x["noise_mask"])
    assert torch.equal(x["sample_index"], torch.tensor([6, 9, 6, 9]))   # the pair in one micro-batch
    t = x["t"]
    assert bool(((t[:B] >= 0.3) & (t[:B] <= 0.8)).all())
    assert torch.allclose(t[:B] + t[B:], torch.ones_like(t[:B]))


def test_noise_is_complementary_instances(sft):
    x, ref = sft["inputs"], sft["ref"]
    assert torch.equal(x["tokens"][:, :S.L], ref["xt"])
    assert torch.equal(x["noise_mask"], ref["noise_mask"])
    assert torch.equal(x["t"], ref["t"])


def test_attention_follows_dataset_documents_not_eod(sft):
    mask = sft["inputs"]["mask"]
    assert torch.equal(mask, sft["ref"]["brute_mask"])
    # the EOD after the first reply of row 0 does not start a document: its second prompt still sees
    # the first reply's clean block (x0 half, block 0) from the noisy block 1
    assert bool(mask[0, 8, S.L + 4])


@pytest.mark.parametrize("key", ["none/masked_tokens", "inv_t/all_tokens"])
def test_loss_equals_brute_force(sft, key):
    got_sum, got_count = sft[key]
    want_sum, want_count = sft["brute"][key]
    assert got_count == want_count
    assert got_sum == pytest.approx(want_sum, rel=1e-5)


def test_cap_term_is_weighted_entropy_of_correct_masked_tokens(sft):
    loss_sum, count, cap_sum, cap_tokens, keys = sft["cap"]
    ce_sum, ce_count, ent_sum, ent_count = sft["brute_cap"]
    assert ent_count > 5                      # the crafted logits predict about half the targets
    assert count == ce_count and cap_tokens == ent_count
    assert cap_sum == pytest.approx(ent_sum, rel=1e-5)
    assert loss_sum == pytest.approx(ce_sum + 2.0 * ent_sum, rel=1e-5)
    assert keys[-2:] == ("cap_loss_sum", "cap_tokens")
    assert sft["cap_grad_differs"] and sft["finite"]
