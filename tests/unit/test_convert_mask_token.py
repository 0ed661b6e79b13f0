"""Mask-token policy: explicit id, tokenizer id, free padded row, grown vocabulary; row initialisation."""

import pytest
import torch

from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.convert.mask_token import fill_vocab_rows, padded_size, plan_mask_token


def _plan(**kw):
    base = dict(vocab_size=250, source_padded=256, divisible_by=128, target_tensor_parallel=1)
    base.update(kw)
    return plan_mask_token(**base)


def test_policy_table():
    p = _plan(mask_token_id=7)
    assert (p.mask_token_id, p.how, p.vocab_size, p.padded, p.init_rows) == (7, "explicit", 250, 256, [])
    p = _plan(mask_token_id=253)  # a padding row becomes a token
    assert (p.mask_token_id, p.vocab_size, p.padded, p.init_rows) == (253, 254, 256, [253])
    p = _plan(tokenizer_mask_id=249)
    assert (p.mask_token_id, p.how, p.init_rows) == (249, "tokenizer", [])
    p = _plan()  # no tokenizer mask: the first free padded row
    assert (p.mask_token_id, p.how, p.vocab_size, p.padded, p.init_rows) == (250, "padded-row", 251, 256, [250])
    p = _plan(vocab_size=256, add_mask_token=True)  # no free row: grow and re-pad
    assert (p.mask_token_id, p.how, p.vocab_size, p.padded) == (256, "grown", 257, 384)
    p = _plan(vocab_size=256, add_mask_token=True, target_tensor_parallel=4)
    assert p.padded == padded_size(257, 128, 4) == 512
    p = _plan(vocab_size=200, source_padded=1024, divisible_by=128, mask_token_id=3)  # smaller padding
    assert p.padded == 256 and p.source_padded == 1024


def test_bad_ids_are_one_line_errors():
    with pytest.raises(ConversionError, match=r"--mask-token-id 256 is out of range: .*\(valid ids 0\.\.255;"):
        _plan(mask_token_id=256)
    with pytest.raises(ConversionError, match="out of range"):
        _plan(mask_token_id=-1)
    with pytest.raises(ConversionError, match="not both"):
        _plan(mask_token_id=3, add_mask_token=True)
    with pytest.raises(ConversionError, match="use mean, zero or copy:ID"):
        _plan(init="random")
    with pytest.raises(ConversionError, match="row 300 is not a token"):
        _plan(init="copy:300")


def test_row_initialisation():
    torch.manual_seed(0)
    src = torch.randn(6, 3)
    plan = _plan(vocab_size=5, source_padded=6, divisible_by=4, add_mask_token=True)  # 5 -> 6 tokens, pad 8
    assert (plan.mask_token_id, plan.padded) == (5, 8)
    out = torch.empty(8, 3)
    out[:6] = src
    fill_vocab_rows(out, plan, copied_rows=6)
    assert torch.allclose(out[5], src[:5].mean(0), atol=1e-6)
    assert torch.equal(out[:5], src[:5]) and torch.equal(out[6:], torch.zeros(2, 3))
    zero = _plan(vocab_size=5, source_padded=6, divisible_by=4, add_mask_token=True, init="zero")
    assert torch.equal(fill_vocab_rows(src.clone(), zero, 6)[5], torch.zeros(3))
    copy = _plan(vocab_size=5, source_padded=6, divisible_by=4, add_mask_token=True, init="copy:2")
    assert torch.equal(fill_vocab_rows(src.clone(), copy, 6)[5], src[2])
