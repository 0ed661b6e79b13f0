"""Batch assembly: document ids from EOD positions and collation of samples into [B, L] tensors."""

import pytest
import torch

from megatron_dllm.data.batch import collate, document_ids_from_eod

E = 9  # the EOD id in these tables


@pytest.mark.parametrize("tokens,expected", [
    ([5, 7, E, 3, E, 6], [0, 0, 0, 1, 1, 2]),   # an EOD belongs to the document it ends
    ([E, 1, 2, 3], [0, 1, 1, 1]),
    ([1, 2, 3, 4], [0, 0, 0, 0]),
    ([E, E, E, 4], [0, 1, 2, 3]),
    ([4, 4, 4, E], [0, 0, 0, 0]),
])
def test_document_ids_value_table(tokens, expected):
    out = document_ids_from_eod(torch.tensor(tokens), E)
    assert out.dtype == torch.long
    assert out.tolist() == expected


def test_document_ids_are_per_row_in_a_batch():
    tokens = torch.tensor([[5, E, 3, E, 6], [E, 1, 1, 1, E]])
    assert document_ids_from_eod(tokens, E).tolist() == [[0, 0, 1, 1, 2], [0, 1, 1, 1, 1]]


def test_document_ids_match_a_python_loop():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (3, 50), generator=g)
    expected = []
    for row in tokens.tolist():
        doc, ids = 0, []
        for tok in row:
            ids.append(doc)
            doc += tok == 0
        expected.append(ids)
    assert document_ids_from_eod(tokens, 0).tolist() == expected


def test_collate_shapes_dtypes_values():
    samples = [
        {"tokens": torch.tensor([1, 2, E]), "loss_mask": torch.tensor([True, True, False]),
         "document_ids": torch.tensor([0, 0, 0]), "extra": 1},
        {"tokens": torch.tensor([E, 4, 5]), "loss_mask": torch.tensor([True, True, True]),
         "document_ids": torch.tensor([0, 1, 1])},
    ]
    batch = collate(samples, [17, 3])
    assert set(batch) == {"tokens", "loss_mask", "document_ids", "sample_index"}
    assert batch["tokens"].dtype == torch.long and batch["tokens"].tolist() == [[1, 2, E], [E, 4, 5]]
    assert batch["loss_mask"].dtype == torch.bool
    assert batch["loss_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["document_ids"].dtype == torch.long
    assert batch["document_ids"].tolist() == [[0, 0, 0], [0, 1, 1]]
    assert batch["sample_index"].dtype == torch.long and batch["sample_index"].tolist() == [17, 3]


def test_collate_errors():
    s = {"tokens": torch.zeros(3, dtype=torch.long), "loss_mask": torch.ones(3, dtype=torch.bool),
         "document_ids": torch.zeros(3, dtype=torch.long)}
    t = {k: torch.cat([v, v]) for k, v in s.items()}
    with pytest.raises(ValueError, match="2 samples but 1 sample indices"):
        collate([s, s], [0])
    with pytest.raises(ValueError, match=r"same length, got lengths \[3, 6\]"):
        collate([s, t], [0, 1])
