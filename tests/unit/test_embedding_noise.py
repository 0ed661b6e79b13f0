"""The embedding-noise hook (model/embedding_noise.py) adds its noise only inside ``applied``, only in
the first ``iters`` iterations, only at [MASK] positions, and holds no state outside the block."""

import types

import torch

from megatron_dllm.diffusion.seeding import noise_generator
from megatron_dllm.model.embedding_noise import STREAM_EMBEDDING, EmbeddingNoise

MASK, STD, SEED, HIDDEN = 7, 0.5, 11, 4


class _Embedding(torch.nn.Module):
    """Megatron's embedding contract: input_ids [b, s] -> [s, b, h]."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(8, HIDDEN)

    def forward(self, input_ids):
        return self.table(input_ids).transpose(0, 1)


def _setup():
    embedding = _Embedding()
    hook = EmbeddingNoise(MASK, STD, SEED, iters=3)
    hook.attach(types.SimpleNamespace(embedding=embedding))
    ids = torch.tensor([[1, MASK, 2, MASK], [MASK, 3, 4, 5]])
    return embedding, hook, ids


def test_noise_at_mask_positions_inside_the_block_only():
    embedding, hook, ids = _setup()
    clean = embedding(input_ids=ids).detach()
    with torch.no_grad(), hook.applied([20, 21], iteration=2):
        noised = embedding(input_ids=ids)
    expected = clean.clone()
    for b, sample in enumerate([20, 21]):
        draw = torch.randn(4, HIDDEN, generator=noise_generator(SEED, sample, 2, stream=STREAM_EMBEDDING))
        for s in range(4):
            if ids[b, s] == MASK:
                expected[s, b] += STD * draw[s]
    assert torch.equal(noised, expected)
    assert not torch.equal(noised, clean)
    with torch.no_grad():
        assert torch.equal(embedding(input_ids=ids), clean)  # after the block: off again
    assert hook._rows is None


def test_no_noise_from_iteration_iters_on():
    embedding, hook, ids = _setup()
    clean = embedding(input_ids=ids).detach()
    with torch.no_grad(), hook.applied([20, 21], iteration=3):
        assert torch.equal(embedding(input_ids=ids), clean)
