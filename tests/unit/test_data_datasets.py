"""build_datasets over preprocessed .bin/.idx data and mock data: same-position L-token windows of
the document stream, document ids, blends, splits, caches, validation errors, two ranks."""

import io
import os
import shutil

import numpy
import pytest
import sentencepiece
import torch

from megatron_dllm.data.batch import document_ids_from_eod
from megatron_dllm.data.config import DataConfig
from megatron_dllm.data.datasets import (MockDocuments, build_datasets, parse_data_path, parse_split,
                                        same_position_sample)
from megatron_dllm.data.errors import DataError
from megatron_dllm.data.preprocess import preprocess_jsonl
from megatron_dllm.data.sampler import GlobalBatchSampler
from megatron_dllm.data.synthetic import (WORDS_A, WORDS_B, synthetic_lines, train_sentencepiece,
                                          write_jsonl)
from tests.distributed.harness import run_ranks

L = 16
EOD = 1


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two preprocessed corpora: A (words of letters a-m) and B (letters n-z), one tokenizer."""
    root = tmp_path_factory.mktemp("data")
    lines = {"a": synthetic_lines(120, seed=2, words=WORDS_A),
             "b": synthetic_lines(120, seed=3, words=WORDS_B)}
    model = train_sentencepiece(lines["a"] + lines["b"], str(root / "tok"), vocab_size=100)
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    assert sp.eos_id() == EOD
    out = {"root": root, "model": model, "sp": sp}
    for name, texts in lines.items():
        write_jsonl(str(root / f"{name}.jsonl"), texts)
        stats = preprocess_jsonl(str(root / f"{name}.jsonl"), model, str(root / f"corpus_{name}"),
                                 log=io.StringIO())
        out[name] = stats.output_prefix
        # independent reference: the library's encoding of each line, EOD appended
        out[name + "_docs"] = [sp.encode(t) + [EOD] for t in texts]
    return out


def _is_window_of_documents(tokens, docs):
    """tokens = (suffix of a doc) + whole docs + (prefix of a doc), cut at EOD tokens."""
    pieces, cur = [], []
    for t in tokens:
        cur.append(t)
        if t == EOD:
            pieces.append(cur)
            cur = []
    if cur:
        pieces.append(cur)
    docs = [list(d) for d in docs]
    if len(pieces) == 1 and pieces[0][-1] != EOD:
        p = pieces[0]
        return any(p == d[k:k + len(p)] for d in docs for k in range(len(d) - len(p) + 1))
    for n, p in enumerate(pieces):
        complete_end = p[-1] == EOD
        if n == 0 and complete_end:
            ok = any(d[len(d) - len(p):] == p for d in docs if len(d) >= len(p))
        elif n == len(pieces) - 1 and not complete_end:
            ok = any(d[:len(p)] == p for d in docs)
        else:
            ok = p in docs
        if not ok:
            return False
    return True


def _loop_document_ids(tokens):
    doc, out = 0, []
    for t in tokens:
        out.append(doc)
        doc += t == EOD
    return out


def test_parse_helpers():
    assert parse_split("969, 30,1") == [969.0, 30.0, 1.0]
    assert parse_data_path(["p"]) == (["p"], None)
    assert parse_data_path(["0.3", "p", "7", "q"]) == (["p", "q"], [0.3, 7.0])
    assert parse_data_path(["2", "p"]) == (["p"], None)
    assert parse_data_path(["p", "q"]) == (["p", "q"], None)      # sized by document count
    assert parse_data_path(["p", "q", "r"]) == (["p", "q", "r"], None)


@pytest.mark.parametrize("text,tokens,loss_mask,document_ids", [
    ([5, EOD, 7, 8], [5, EOD, 7, 8], [1, 1, 1, 1], [0, 0, 1, 1]),
    # padding (-1) only ends a last partial validation window: own document, no loss
    ([5, EOD, 7, -1, -1], [5, EOD, 7, EOD, EOD], [1, 1, 1, 0, 0], [0, 0, 1, 2, 2]),
    ([5, EOD, -1], [5, EOD, EOD], [1, 1, 0], [0, 0, 1]),
])
def test_same_position_sample_value_table(text, tokens, loss_mask, document_ids):
    s = same_position_sample(torch.tensor(text), EOD)
    assert s["tokens"].tolist() == tokens
    assert s["loss_mask"].tolist() == [bool(v) for v in loss_mask]
    assert s["document_ids"].tolist() == document_ids


def test_samples_are_l_token_windows_of_the_document_stream(process_group, corpora):
    docs = corpora["a_docs"]
    cfg = DataConfig(data_path=[corpora["a"]], split="8,1,1")
    datasets = build_datasets(cfg, seq_length=L, num_samples=(300, 20, 20), seed=5, eod_id=EOD)
    n = len(docs)
    ranges = [(0, round(0.8 * n)), (round(0.8 * n), round(0.9 * n)), (round(0.9 * n), n)]
    for ds, (lo, hi), wanted in zip(datasets, ranges, (300, 20, 20)):
        assert len(ds) >= wanted
        inner = ds.inner
        # each split reads exactly its own documents (every one of them: >= 1 epoch)
        assert set(inner.document_index.tolist()) == set(range(lo, hi))
        stream = numpy.concatenate([docs[d] for d in inner.document_index])
        split_docs = docs[lo:hi]
        for i in range(len(ds)):
            s = ds[i]
            assert set(s) == {"tokens", "loss_mask", "document_ids"}
            assert s["tokens"].dtype == torch.long and s["tokens"].shape == (L,)
            assert s["loss_mask"].dtype == torch.bool and bool(s["loss_mask"].all())
            j = int(inner.shuffle_index[i])
            tokens = s["tokens"].tolist()
            assert tokens == stream[j * L:(j + 1) * L].tolist()
            assert _is_window_of_documents(tokens, split_docs)
            assert s["document_ids"].tolist() == _loop_document_ids(tokens)
    # the train split spans several epochs, and some windows hold several documents
    train = datasets[0]
    assert len(train.inner.document_index) >= 2 * ranges[0][1]
    assert max(int(train[i]["document_ids"].max()) for i in range(len(train))) >= 1


def test_blend_of_two_prefixes_follows_the_weights(process_group, corpora):
    cfg = DataConfig(data_path=["0.25", corpora["a"], "0.75", corpora["b"]], split="1,0,0")
    train, valid, test = build_datasets(cfg, seq_length=L, num_samples=(200, 0, 0), seed=3, eod_id=EOD)
    assert valid is None and test is None
    assert len(train) == 200
    sp = corpora["sp"]
    letters_a, letters_b = set("abcdefghijklm"), set("nopqrstuvwxyz")
    counts = {"a": 0, "b": 0}
    for i in range(len(train)):
        tokens = train[i]["tokens"].tolist()
        chars = set("".join(sp.id_to_piece(t) for t in tokens if t > 3).lower())  # not </s> etc.
        src = "a" if chars & letters_a else "b"
        assert not (chars & letters_a and chars & letters_b)
        assert _is_window_of_documents(tokens, corpora[src + "_docs"])
        counts[src] += 1
    assert counts == {"a": 50, "b": 150}


def test_data_cache_path_holds_the_index_caches(process_group, corpora, tmp_path):
    data_dir = os.path.dirname(corpora["b"])
    before = set(os.listdir(data_dir))
    cfg = DataConfig(data_path=[corpora["b"]], split="8,1,1", data_cache_path=str(tmp_path / "c"))
    first = build_datasets(cfg, seq_length=L, num_samples=(40, 4, 4), seed=9, eod_id=EOD)[0]
    cached = sorted(os.listdir(tmp_path / "c"))
    assert len(cached) == 12 and all("DllmGPTDataset" in f for f in cached)
    assert set(os.listdir(data_dir)) == before
    again = build_datasets(cfg, seq_length=L, num_samples=(40, 4, 4), seed=9, eod_id=EOD)[0]
    assert sorted(os.listdir(tmp_path / "c")) == cached
    assert all(torch.equal(first[i]["tokens"], again[i]["tokens"]) for i in range(len(first)))
    # a different seed gives a different order
    other = build_datasets(cfg, seq_length=L, num_samples=(40, 4, 4), seed=10, eod_id=EOD)[0]
    assert any(not torch.equal(first[i]["tokens"], other[i]["tokens"]) for i in range(len(first)))


def test_default_cache_is_next_to_the_data_as_megatron_does(process_group, corpora, tmp_path):
    prefix = str(tmp_path / "copy_text_document")
    for ext in (".bin", ".idx"):
        shutil.copy(corpora["a"] + ext, prefix + ext)
    build_datasets(DataConfig(data_path=[prefix], split="1,0,0"), seq_length=L,
                   num_samples=(10, 0, 0), seed=1, eod_id=EOD)
    assert len(os.listdir(os.path.join(prefix, "cache", "DllmGPTDataset_indices"))) == 4


def test_zero_weight_or_zero_samples_give_none(process_group, corpora):
    cfg = DataConfig(data_path=[corpora["a"]], split="9,0,1")
    train, valid, test = build_datasets(cfg, seq_length=L, num_samples=(10, 5, 0), seed=1, eod_id=EOD)
    assert train is not None and valid is None and test is None


@pytest.fixture
def copy_of_a(corpora, tmp_path):
    prefix = str(tmp_path / "x_text_document")
    for ext in (".bin", ".idx"):
        shutil.copy(corpora["a"] + ext, prefix + ext)
    return prefix


def _build(prefix_or_path, split="8,1,1", num_samples=(10, 2, 2)):
    data_path = prefix_or_path if isinstance(prefix_or_path, list) else [prefix_or_path]
    return build_datasets(DataConfig(data_path=data_path, split=split), seq_length=L,
                          num_samples=num_samples, seed=1, eod_id=EOD)


def test_missing_idx_or_bin_is_named(process_group, copy_of_a):
    os.remove(copy_of_a + ".idx")
    with pytest.raises(DataError) as err:
        _build(copy_of_a)
    assert f"data file {copy_of_a}.idx does not exist" in str(err.value)
    assert "tools/preprocess_data.py" in str(err.value)
    shutil.copy(copy_of_a + ".bin", copy_of_a + ".idx")
    os.remove(copy_of_a + ".bin")
    with pytest.raises(DataError, match=f"data file {copy_of_a}.bin does not exist"):
        _build(copy_of_a)


def test_corrupt_idx_is_named(process_group, copy_of_a):
    idx = copy_of_a + ".idx"
    good = open(idx, "rb").read()
    with open(idx, "wb") as handle:
        handle.write(b"XXXXXXXXX" + good[9:])
    with pytest.raises(DataError, match=f"index file {idx} is corrupt \\(bad magic"):
        _build(copy_of_a)
    with open(idx, "wb") as handle:
        handle.write(good[:-8])
    with pytest.raises(DataError, match=f"index file {idx} is corrupt"):
        _build(copy_of_a)
    with open(idx, "wb") as handle:
        handle.write(good[:20])
    with pytest.raises(DataError, match=f"index file {idx} is corrupt"):
        _build(copy_of_a)
    with open(idx, "wb") as handle:
        handle.write(good)
    with open(copy_of_a + ".bin", "ab") as handle:
        handle.write(b"\0\0")
    with pytest.raises(DataError, match=f"data file {copy_of_a}.bin .* does not match its index"):
        _build(copy_of_a)


def test_bad_weights_split_and_sizes(process_group, corpora):
    a, b = corpora["a"], corpora["b"]
    with pytest.raises(DataError, match=r"--data-path weight 'x' is not a number"):
        _build(["x", a, "0.5", b])
    with pytest.raises(DataError, match=r"weight 0.0 must be a positive number"):
        _build(["0", a, "1", b])
    for split in ("1,2", "a,b,c", "-1,1,1", "0,0,0", "1,1,1,1"):
        with pytest.raises(DataError, match="--split"):
            _build(a, split=split)
    with pytest.raises(DataError, match="num_samples must be three integers"):
        _build(a, num_samples=(10, -1, 0))
    with pytest.raises(DataError, match="no data given"):
        _build([])
    # 120 documents: a weight of 1 in 1000 gives the test split no document
    with pytest.raises(DataError, match=r"--split 969,30,1 gives the test split none of the 120 documents"):
        _build(a, split="969,30,1")


def test_mock_data_is_deterministic_and_structured(process_group):
    def build(seed, split="98,1,1", counts=(64, 8, 8)):
        return build_datasets(DataConfig(mock_data=True, split=split), seq_length=L,
                              num_samples=counts, seed=seed, eod_id=EOD, vocab_size=40,
                              mask_token_id=3)

    first, again, other = build(11), build(11), build(12)
    for split in range(3):
        for i in range(8):
            assert all(torch.equal(first[split][i][k], again[split][i][k])
                       for k in ("tokens", "loss_mask", "document_ids"))
    train = first[0]
    rows = torch.stack([train[i]["tokens"] for i in range(64)])
    assert rows.shape == (64, L) and rows.dtype == torch.long
    assert len({tuple(r) for r in rows.tolist()}) == 64           # different index -> different
    assert any(not torch.equal(train[i]["tokens"], other[0][i]["tokens"]) for i in range(8))
    assert int(rows.min()) >= 0 and int(rows.max()) < 40 and not bool((rows == 3).any())
    ids = torch.stack([train[i]["document_ids"] for i in range(64)])
    assert torch.equal(ids, document_ids_from_eod(rows, EOD))
    assert int((ids.max(dim=1).values > 0).sum()) >= 16           # documents of varied lengths
    # a split with weight 0 is not built
    assert build(11, split="1,0,0", counts=(8, 8, 8))[1:] == (None, None)


def test_mock_default_ids_stay_below_eod(process_group):
    # mock runs put EOD and [MASK] at the top of the vocabulary (vocab 64: EOD 62, mask 63)
    train = build_datasets(DataConfig(mock_data=True, split="1,0,0"), seq_length=L,
                           num_samples=(32, 0, 0), seed=0, eod_id=62)[0]
    rows = torch.stack([train[i]["tokens"] for i in range(32)])
    assert int(rows.max()) == 62 and not bool((rows == 63).any())
    assert int((rows == 62).sum()) > 0 and len(set(rows[rows < 62].tolist())) > 40


def test_mock_documents_have_learnable_patterns():
    docs = MockDocuments(seed=3, seq_length=L, vocab_size=50, excluded_ids=[3], eod_id=EOD)
    lengths = docs.sequence_lengths[:300]
    assert lengths.min() >= 4 and lengths.max() <= 2 * L and len(set(lengths.tolist())) > 10
    index_of = {int(t): k for k, t in enumerate(docs.content_ids)}
    kinds = set()
    for i in range(300):
        doc = docs.document(i)
        assert len(doc) == lengths[i] and doc[-1] == EOD and EOD not in doc[:-1] and 3 not in doc
        v = numpy.array([index_of[int(t)] for t in doc[:-1]])
        k = len(docs.content_ids)
        steps = set(((v[1:] - v[:-1]) % k).tolist())
        half = (len(v) + 1) // 2
        if len(steps) == 1 and steps <= {1, 2, 3}:
            kinds.add("count")
        elif any(all(v[j] == v[j % p] for j in range(len(v))) for p in range(2, 9)):
            kinds.add("ngram")
        elif numpy.array_equal(v[half:], v[:len(v) - half]):
            kinds.add("copy")
        else:
            raise AssertionError(f"document {i} follows no pattern: {v.tolist()}")
        assert numpy.array_equal(docs.get(i, 2, 3), doc[2:5])
    assert kinds == {"count", "ngram", "copy"}


def _two_rank_worker(rank, world_size, prefix, cache_dir):
    cfg = DataConfig(data_path=[prefix], split="8,1,1", data_cache_path=cache_dir)
    train, _, _ = build_datasets(cfg, seq_length=L, num_samples=(64, 8, 8), seed=7, eod_id=EOD)
    sampler = GlobalBatchSampler(len(train), 0, 8, 2, rank, world_size)
    seen = [mb for step in range(2) for mb in sampler.micro_batches_for_step(step)]
    return {"tokens": [train[i]["tokens"].tolist() for i in range(len(train))], "seen": seen,
            "cache": sorted(os.listdir(cache_dir))}


def test_two_ranks_share_one_cache_and_read_disjoint_slices(process_group, corpora, tmp_path):
    cache = str(tmp_path / "shared_cache")
    r0, r1 = run_ranks(_two_rank_worker, 2, args=(corpora["a"], cache), timeout=240)
    assert r0["tokens"] == r1["tokens"]
    assert r0["cache"] == r1["cache"] and len(r0["cache"]) == 12
    # two steps of G = 8: rank 0 reads 0..3 and 8..11, rank 1 reads 4..7 and 12..15
    assert r0["seen"] == [[0, 1], [2, 3], [8, 9], [10, 11]]
    assert r1["seen"] == [[4, 5], [6, 7], [12, 13], [14, 15]]
    # the same samples as a one-rank build with its own cache
    cfg = DataConfig(data_path=[corpora["a"]], split="8,1,1", data_cache_path=str(tmp_path / "own"))
    train = build_datasets(cfg, seq_length=L, num_samples=(64, 8, 8), seed=7, eod_id=EOD)[0]
    assert [train[i]["tokens"].tolist() for i in range(len(train))] == r0["tokens"]


def test_a_process_group_is_required(corpora, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with pytest.raises(DataError, match="build_datasets needs torch.distributed initialised"):
        build_datasets(DataConfig(data_path=[corpora["a"]], split="1,0,0"), seq_length=L,
                       num_samples=(4, 0, 0), seed=0, eod_id=EOD)
