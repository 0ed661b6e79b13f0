"""Tokenizer loading: sentencepiece and HF tokenizer.json, special ids, mask-token lookup, errors."""

import json
import os
import pickle

import pytest
import sentencepiece

from megatron_dllm.data.errors import DataError
from megatron_dllm.data.synthetic import synthetic_lines, train_sentencepiece
from megatron_dllm.data.tokenizer import load_tokenizer, require_mask_token


@pytest.fixture(scope="module")
def lines():
    return synthetic_lines(200, seed=1)


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory, lines):
    return train_sentencepiece(lines, str(tmp_path_factory.mktemp("sp") / "tok"), vocab_size=80)


def test_sentencepiece_ids_match_the_library(sp_model, lines):
    tok = load_tokenizer(sp_model)
    ref = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    assert tok.kind == "sentencepiece"
    assert tok.vocab_size == ref.get_piece_size() == 80
    assert (tok.eod_id, tok.pad_id) == (1, 2)
    assert tok.mask_token_id == 3 == ref.piece_to_id("<|mask|>")
    for text in lines[:20]:
        ids = tok.encode(text)
        assert ids == ref.encode(text)
        assert tok.decode(ids) == ref.decode(ref.encode(text))
    assert tok.encode("") == []
    assert require_mask_token(tok) == 3


def test_directory_and_pickle(sp_model, tmp_path):
    os.symlink(sp_model, tmp_path / "tokenizer.model")
    tok = load_tokenizer(str(tmp_path))
    assert tok.mask_token_id == 3 and tok.eod_id == 1
    clone = pickle.loads(pickle.dumps(load_tokenizer(sp_model, mask_token_id=7)))
    assert clone.mask_token_id == 7
    assert clone.encode("alpha nor") == tok.encode("alpha nor")


def test_explicit_mask_token_id_is_validated(sp_model):
    assert load_tokenizer(sp_model, mask_token_id=10).mask_token_id == 10
    with pytest.raises(DataError, match=r"--dllm-mask-token-id 80 is outside the vocabulary .* \(ids 0..79\)"):
        load_tokenizer(sp_model, mask_token_id=80)
    with pytest.raises(DataError, match=r"--dllm-mask-token-id 1 is the end-of-document id"):
        load_tokenizer(sp_model, mask_token_id=1)


def test_missing_mask_token_message(tmp_path, lines):
    model = train_sentencepiece(lines, str(tmp_path / "nomask"), vocab_size=60,
                                user_defined_symbols=None)
    tok = load_tokenizer(model)
    assert tok.mask_token_id is None
    with pytest.raises(DataError) as err:
        require_mask_token(tok)
    assert str(err.value) == (f"tokenizer {model} has no mask token: add '<|mask|>' to the "
                              f"tokenizer or pass --dllm-mask-token-id ID")


def test_sentencepiece_without_eos_is_refused(tmp_path, lines):
    model = train_sentencepiece(lines, str(tmp_path / "noeos"), vocab_size=60, eos_id=-1)
    with pytest.raises(DataError, match=r"has no EOS token"):
        load_tokenizer(model)


def test_missing_and_unreadable_files(tmp_path):
    missing = str(tmp_path / "nope.model")
    with pytest.raises(DataError, match=r"tokenizer file .*nope.model does not exist: pass --tokenizer-model"):
        load_tokenizer(missing)
    with pytest.raises(DataError, match=r"holds neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(str(tmp_path))
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"is not a readable sentencepiece model"):
        load_tokenizer(str(junk))


def _word_level_tokenizer(path, vocab):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(path))


def test_hf_tokenizer_json(tmp_path):
    vocab = {"[UNK]": 0, "</s>": 1, "[MASK]": 2, "hello": 3, "world": 4, "<eot>": 5, "<pad>": 6}
    _word_level_tokenizer(tmp_path / "tokenizer.json", vocab)
    tok = load_tokenizer(str(tmp_path))  # directory -> tokenizer.json
    assert tok.kind == "hf"
    assert (tok.vocab_size, tok.eod_id, tok.mask_token_id, tok.pad_id) == (7, 1, 2, 6)
    assert tok.encode("hello world hello") == [3, 4, 3]
    assert tok.decode([3, 4]) == "hello world"
    # tokenizer_config.json names the EOS token (string or {"content": ...})
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<eot>"}}))
    tok = load_tokenizer(str(tmp_path / "tokenizer.json"), mask_token_id=4)
    assert (tok.eod_id, tok.mask_token_id) == (5, 4)
    assert pickle.loads(pickle.dumps(tok)).encode("world") == [4]


def test_hf_tokenizer_without_eod_is_refused(tmp_path):
    _word_level_tokenizer(tmp_path / "t.json", {"[UNK]": 0, "hello": 1})
    with pytest.raises(DataError, match=r"has no end-of-document token"):
        load_tokenizer(str(tmp_path / "t.json"))
