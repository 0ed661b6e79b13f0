"""tools/preprocess_data.py: JSON lines -> .bin/.idx read back with Megatron's IndexedDataset,
identical bytes for any worker count, one-line errors with file:line, no half-written output;
--format sft / dpo: tokens and loss masks equal to a piece-by-piece reference."""

import io
import json
import os
import subprocess
import sys

import numpy
import pytest
import sentencepiece

from megatron_dllm.data.synthetic import synthetic_lines, train_sentencepiece, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join("tools", "preprocess_data.py")


def _run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    texts = synthetic_lines(150, seed=4)
    model = train_sentencepiece(texts, str(root / "tok"), vocab_size=100)
    path = root / "corpus.jsonl"
    write_jsonl(str(path), texts)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n")                                          # blank line: skipped
        handle.write(json.dumps({"text": ""}) + "\n")               # no tokens: skipped
        handle.write(json.dumps({"text": "caf\u00e9 \u00fcber bad", "x": 1}) + "\n")
    texts = texts + ["caf\u00e9 \u00fcber bad"]
    return {"root": root, "model": model, "input": str(path), "texts": texts}


def _read_documents(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    assert ds.document_indices.tolist() == list(range(len(ds) + 1))  # one sequence per document
    return [ds[i].astype(numpy.int64).tolist() for i in range(len(ds))], ds.index.dtype


def test_cli_round_trip_and_worker_count_invariance(corpus, tmp_path):
    out2 = str(tmp_path / "w2" / "corpus")
    proc = _run("--input", corpus["input"], "--tokenizer-model", corpus["model"],
                "--output-prefix", out2, "--workers", "2", "--log-interval", "50")
    assert proc.returncode == 0, proc.stderr[-2000:]
    prefix = out2 + "_text_document"
    assert sorted(os.listdir(tmp_path / "w2")) == ["corpus_text_document.bin", "corpus_text_document.idx"]
    assert proc.stderr.count("processed ") == 3                     # 151 documents, every 50
    assert "done: 151 documents" in proc.stderr and "2 skipped" in proc.stderr
    sp = sentencepiece.SentencePieceProcessor(model_file=corpus["model"])
    docs, dtype = _read_documents(prefix)
    assert dtype == numpy.uint16
    assert docs == [sp.encode(t) + [sp.eos_id()] for t in corpus["texts"]]

    from megatron_dllm.data.preprocess import preprocess_jsonl

    stats = preprocess_jsonl(corpus["input"], corpus["model"], str(tmp_path / "w1" / "corpus"),
                             workers=1, log=io.StringIO())
    assert (stats.documents, stats.skipped, stats.tokens) == (151, 2, sum(map(len, docs)))
    for ext in (".bin", ".idx"):
        with open(prefix + ext, "rb") as a, open(stats.output_prefix + ext, "rb") as b:
            assert a.read() == b.read()


def test_workers_keep_input_order_when_chunks_finish_out_of_order(corpus, tmp_path):
    """A long first document keeps one worker busy while the other finishes later lines."""
    from megatron_dllm.data.preprocess import preprocess_jsonl

    texts = [" ".join(corpus["texts"][:150] * 400)] + corpus["texts"][:60]
    path = tmp_path / "skew.jsonl"
    write_jsonl(str(path), texts)
    outs = []
    for workers in (1, 2):
        stats = preprocess_jsonl(str(path), corpus["model"], str(tmp_path / f"w{workers}"),
                                 workers=workers, chunk_size=1, log=io.StringIO())
        outs.append([open(stats.output_prefix + ext, "rb").read() for ext in (".bin", ".idx")])
    assert outs[0] == outs[1]


def test_no_append_eod_and_json_key(corpus, tmp_path):
    from megatron_dllm.data.preprocess import preprocess_jsonl

    path = tmp_path / "c.jsonl"
    write_jsonl(str(path), corpus["texts"][:5], key="body")
    stats = preprocess_jsonl(str(path), corpus["model"], str(tmp_path / "o"), json_key="body",
                             append_eod=False, log=io.StringIO())
    assert stats.output_prefix == str(tmp_path / "o_body_document")
    sp = sentencepiece.SentencePieceProcessor(model_file=corpus["model"])
    assert _read_documents(stats.output_prefix)[0] == [sp.encode(t) for t in corpus["texts"][:5]]


def test_missing_input_fails_in_one_line(corpus, tmp_path):
    proc = _run("--input", str(tmp_path / "nope.jsonl"), "--tokenizer-model", corpus["model"],
                "--output-prefix", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr == f"error: input file {tmp_path / 'nope.jsonl'} does not exist: pass --input FILE.jsonl\n"
    assert os.listdir(tmp_path) == []


def test_bad_json_line_reports_file_and_line(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    # a blank line and an empty text are skipped but still counted as lines
    bad.write_text('\n{"text": ""}\n{"text": oops}\n{"text": "fig"}\n')
    proc = _run("--input", str(bad), "--tokenizer-model", corpus["model"],
                "--output-prefix", str(tmp_path / "out" / "x"), "--workers", "2")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:3: not valid JSON")
    assert os.listdir(tmp_path) == ["bad.jsonl"]


@pytest.mark.parametrize("line,reason", [
    ('{"body": "x"}', "no key 'text' (keys: 'body'): pass --json-key NAME"),
    ('{"text": 5}', "value of 'text' is a int, not a string"),
    ('["text"]', "not a JSON object with key 'text'"),
])
def test_bad_record_after_output_started_leaves_nothing(corpus, tmp_path, capsys, line, reason):
    """The failure comes after documents were written: the temporary files go, and an earlier
    output at the same prefix is left as it was."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import preprocess_data
    finally:
        sys.path.pop(0)
    good = tmp_path / "good.jsonl"
    write_jsonl(str(good), corpus["texts"][:40])
    out = str(tmp_path / "o")
    assert preprocess_data.main(["--input", str(good), "--tokenizer-model", corpus["model"],
                                 "--output-prefix", out, "--log-interval", "0"]) == 0
    before = {f: open(tmp_path / f, "rb").read() for f in ("o_text_document.bin", "o_text_document.idx")}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + line + "\n")
    capsys.readouterr()
    assert preprocess_data.main(["--input", str(bad), "--tokenizer-model", corpus["model"],
                                 "--output-prefix", out]) == 2
    assert capsys.readouterr().err == f"error: {bad}:41: {reason}\n"
    after = {f: open(tmp_path / f, "rb").read() for f in os.listdir(tmp_path) if f.startswith("o_")}
    assert after == before


def test_help():
    proc = _run("--help")
    assert proc.returncode == 0
    for flag in ("--input", "--json-key", "--tokenizer-model", "--output-prefix", "--workers",
                 "--append-eod", "--no-append-eod", "--log-interval", "--format", "--chat-template"):
        assert flag in proc.stdout


# --- --format sft / dpo ----------------------------------------------------------------------------

SFT_LINES = [
    {"messages": [{"role": "user", "content": "bad cab"}, {"role": "assistant", "content": "fig"}]},
    {"prompt": "dig egg", "response": "sun snow"},
    {"messages": [{"role": "system", "content": "jam"}, {"role": "user", "content": "kid"},
                  {"role": "assistant", "content": "lime"}, {"role": "user", "content": "made"},
                  {"role": "assistant", "content": "rust"}]},
]


def _pieces(sp, pieces):
    """Brute force: each (text or None for EOD, supervised) piece tokenised on its own."""
    ids, mask = [], []
    for text, on in pieces:
        new = [sp.eos_id()] if text is None else sp.encode(text)
        ids += new
        mask += [on] * len(new)
    return ids, mask


def _read_pair(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tokens, mask = IndexedDataset(prefix + "_tokens"), IndexedDataset(prefix + "_lossmask")
    assert mask.index.dtype == numpy.uint8
    assert tokens.document_indices.tolist() == mask.document_indices.tolist()
    return ([tokens[i].astype(numpy.int64).tolist() for i in range(len(tokens))],
            [mask[i].astype(numpy.int64).tolist() for i in range(len(mask))],
            tokens.document_indices.tolist())


def test_sft_cli_writes_tokens_and_loss_mask(corpus, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in SFT_LINES * 20) + "\n")
    out = str(tmp_path / "w2" / "chat")
    proc = _run("--input", str(path), "--tokenizer-model", corpus["model"], "--output-prefix", out,
                "--format", "sft", "--workers", "2", "--log-interval", "25")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "w2")) == [
        "chat_sft_lossmask.bin", "chat_sft_lossmask.idx", "chat_sft_tokens.bin", "chat_sft_tokens.idx"]
    assert proc.stderr.count("processed ") == 2 and "done: 60 conversations" in proc.stderr
    sp = sentencepiece.SentencePieceProcessor(model_file=corpus["model"])
    want = [
        _pieces(sp, [("user: bad cab\nassistant: ", 0), ("fig", 1), (None, 1)]),
        _pieces(sp, [("user: dig egg\nassistant: ", 0), ("sun snow", 1), (None, 1)]),
        _pieces(sp, [("system: jam\nuser: kid\nassistant: ", 0), ("lime", 1), (None, 1),
                     ("user: made\nassistant: ", 0), ("rust", 1), (None, 1)]),
    ] * 20
    tokens, mask, documents = _read_pair(out + "_sft")
    assert documents == list(range(61))                      # one conversation per document
    assert list(zip(tokens, mask)) == [tuple(w) for w in want]
    assert f"{sum(map(sum, mask))} with loss" in proc.stderr

    from megatron_dllm.data.preprocess import preprocess_jsonl

    stats = preprocess_jsonl(str(path), corpus["model"], str(tmp_path / "w1" / "chat"),
                             format="sft", log=io.StringIO())
    assert (stats.output_prefix, stats.documents, stats.skipped) == (
        str(tmp_path / "w1" / "chat_sft"), 60, 1)
    for name in ("chat_sft_tokens.bin", "chat_sft_tokens.idx", "chat_sft_lossmask.bin",
                 "chat_sft_lossmask.idx"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_dpo_pairs_are_two_sequences_of_one_document(corpus, tmp_path):
    from megatron_dllm.data.preprocess import preprocess_jsonl

    records = [{"prompt": "bad cab", "chosen": "fig", "rejected": "jam jam"},
               {"prompt": [{"role": "user", "content": "kid"}, {"role": "assistant", "content": "egg"},
                           {"role": "user", "content": "dig"}], "chosen": "sun", "rejected": "snow"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records * 3))
    stats = preprocess_jsonl(str(path), corpus["model"], str(tmp_path / "p"), format="dpo",
                             log=io.StringIO())
    assert stats.output_prefix == str(tmp_path / "p_dpo") and stats.documents == 6
    sp = sentencepiece.SentencePieceProcessor(model_file=corpus["model"])
    history = [("user: kid\nassistant: ", 0), ("egg", 0), (None, 0), ("user: dig\nassistant: ", 0)]
    want = [
        _pieces(sp, [("user: bad cab\nassistant: ", 0), ("fig", 1), (None, 1)]),
        _pieces(sp, [("user: bad cab\nassistant: ", 0), ("jam jam", 1), (None, 1)]),
        _pieces(sp, history + [("sun", 1), (None, 1)]),
        _pieces(sp, history + [("snow", 1), (None, 1)]),
    ] * 3
    tokens, mask, documents = _read_pair(stats.output_prefix)
    assert documents == [0, 2, 4, 6, 8, 10, 12]             # pair i = sequences 2i (chosen), 2i+1
    assert list(zip(tokens, mask)) == [tuple(w) for w in want]


@pytest.mark.parametrize("fmt,line,reason", [
    ("sft", '{"messages": [{"role": "user", "content": "a"}]}',
     "'messages' has no assistant turn: add the assistant's reply (it carries the loss)"),
    ("sft", '{"messages": [{"role": "human", "content": "a"}]}',
     "messages[0] has role 'human': use one of system, user, assistant"),
    ("sft", '{"prompt": "a"}',
     "no 'messages' and no 'prompt' / 'response' (keys: 'prompt'): write {\"messages\": "
     "[{\"role\": ..., \"content\": ...}, ...]} or {\"prompt\": ..., \"response\": ...}"),
    ("sft", '{"prompt": "a", "response": ', "not valid JSON (Expecting value at column 29)"),
    ("dpo", '{"prompt": "a", "chosen": "b"}',
     "no key 'rejected' (keys: 'prompt', 'chosen'): write {\"prompt\": ..., \"chosen\": ..., "
     "\"rejected\": ...}"),
    ("dpo", '{"prompt": "a", "chosen": "b", "rejected": 3}', "'rejected' is a int: write it as a string"),
])
def test_bad_chat_line_reports_file_and_line_and_writes_nothing(corpus, tmp_path, capsys, fmt, line,
                                                                 reason):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import preprocess_data
    finally:
        sys.path.pop(0)
    good = (json.dumps({"prompt": "a", "response": "b"}) if fmt == "sft" else
            json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([good] * 30 + [line, good]) + "\n")
    capsys.readouterr()
    assert preprocess_data.main(["--input", str(bad), "--tokenizer-model", corpus["model"],
                                 "--output-prefix", str(tmp_path / "out" / "x"),
                                 "--format", fmt]) == 2
    assert capsys.readouterr().err == f"error: {bad}:31: {reason}\n"
    assert os.listdir(tmp_path) == ["bad.jsonl"]


def test_chat_template_file_is_checked(corpus, tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import preprocess_data
    finally:
        sys.path.pop(0)
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    broken = tmp_path / "t.jinja"
    broken.write_text("{% for m in messages %}")
    capsys.readouterr()
    assert preprocess_data.main(["--input", str(path), "--tokenizer-model", corpus["model"],
                                 "--output-prefix", str(tmp_path / "o"), "--format", "sft",
                                 "--chat-template", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: chat template {broken} does not compile (")
    assert err.endswith("): fix it or pass --chat-template plain\n") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["c.jsonl", "t.jinja"]


def test_pretrain_only_flags_are_refused_for_chat_formats(corpus, tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import preprocess_data
    finally:
        sys.path.pop(0)
    capsys.readouterr()
    assert preprocess_data.main(["--input", "x.jsonl", "--tokenizer-model", corpus["model"],
                                 "--output-prefix", str(tmp_path / "o"), "--format", "dpo",
                                 "--no-append-eod"]) == 2
    assert capsys.readouterr().err == (
        "error: --[no-]append-eod applies to --format pretrain only (--format dpo reads fixed keys "
        "and always ends a reply with EOD): drop it\n")
    assert os.listdir(tmp_path) == []
