"""SFT / DPO data: chat rendering and loss masks against hand-built references, record errors,
padding and packing, the SFT and DPO readers, and the addition task as chat data."""

import collections
import io
import json
import random

import numpy
import pytest
import torch

from megatron_dllm.data.addition import AdditionTask
from megatron_dllm.data.addition_chat import dpo_records, near_miss, sft_records, write_jsonl_records
from megatron_dllm.data.chat_template import (PLAIN, JinjaChatTemplate, encode_conversation,
                                              encode_prompt, load_chat_template)
from megatron_dllm.data.errors import DataError
from megatron_dllm.data.preprocess import preprocess_jsonl
from megatron_dllm.data.sft_packing import pack_greedy, packed_sample, pad_to_block_multiple
from megatron_dllm.data.sft_records import RecordError, dpo_pair, sft_conversation
from megatron_dllm.data.synthetic import synthetic_lines, train_sentencepiece
from megatron_dllm.data.tokenizer import load_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("sfttok")
    lines = synthetic_lines(200, seed=3) + [
        "system: be brief", "user: What is 47+08?", "assistant: 055",
        "<|im_start|>user\nhi<|im_end|>", "0123456789 9876543210"] * 20
    return load_tokenizer(train_sentencepiece(lines, str(root / "tok"), vocab_size=120,
                                              split_digits=True))


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


def _reference(tok, pieces):
    """Brute force: each (text or None for EOD, supervised) piece tokenised on its own."""
    ids, mask = [], []
    for text, on in pieces:
        new = [tok.eod_id] if text is None else tok.encode(text)
        ids += new
        mask += [int(on)] * len(new)
    return ids, mask


# --- rendering and loss masks ---------------------------------------------------------------------


def test_plain_single_turn_is_prompt_then_response_then_eod(tok):
    ids, mask = encode_conversation(tok, PLAIN, [_user("What is 47+08?"), _assistant("055")])
    assert (ids, mask) == _reference(tok, [("user: What is 47+08?\nassistant: ", 0), ("055", 1),
                                           (None, 1)])
    assert sum(mask) == len(tok.encode("055")) + 1


def test_plain_multi_turn_supervises_every_assistant_turn(tok):
    messages = [{"role": "system", "content": "be brief"}, _user("bad cab"), _assistant("fig jam"),
                _user("dig egg"), _assistant("sun snow")]
    want = _reference(tok, [("system: be brief\nuser: bad cab\nassistant: ", 0), ("fig jam", 1),
                            (None, 1), ("user: dig egg\nassistant: ", 0), ("sun snow", 1),
                            (None, 1)])
    assert encode_conversation(tok, PLAIN, messages) == want
    # DPO: only the last reply has loss; the tokens are the same
    ids, mask = encode_conversation(tok, PLAIN, messages, supervise="last")
    assert ids == want[0]
    assert mask == _reference(tok, [("system: be brief\nuser: bad cab\nassistant: ", 0),
                                    ("fig jam", 0), (None, 0), ("user: dig egg\nassistant: ", 0),
                                    ("sun snow", 1), (None, 1)])[1]


def test_jinja_template_single_and_multi_turn(tok):
    template = JinjaChatTemplate(CHATML, "chatml")
    single = encode_conversation(tok, template, [_user("What is 47+08?"), _assistant("055")])
    assert single == _reference(tok, [
        ("<|im_start|>user\nWhat is 47+08?<|im_end|>\n<|im_start|>assistant\n", 0),
        ("055<|im_end|>\n", 1), (None, 1)])
    messages = [{"role": "system", "content": "S"}, _user("U"), _assistant("A1"), _user("U2"),
                _assistant("A2")]
    assert encode_conversation(tok, template, messages) == _reference(tok, [
        ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n", 0),
        ("A1<|im_end|>\n", 1),
        ("<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n", 0),
        ("A2<|im_end|>\n", 1), (None, 1)])


@pytest.mark.parametrize("template", [PLAIN, JinjaChatTemplate(CHATML, "chatml")],
                         ids=["plain", "jinja"])
def test_prompt_ids_are_the_unsupervised_prefix_of_the_conversation(tok, template):
    messages = [_user("bad"), _assistant("fig"), _user("What is 47+08?")]
    ids, mask = encode_conversation(tok, template, messages + [_assistant("055")])
    prompt = encode_prompt(tok, template, messages)
    first_loss = len(ids) - mask[::-1].index(0)  # after the last prompt token
    assert prompt == ids[:first_loss]
    assert all(m == 0 for m in mask[len(tok.encode("bad")) + 1:first_loss][-3:])


def test_llama3_style_template_with_bos_and_trim(tok):
    """A template of the common shape: BOS from the special tokens, contents trimmed, the turn's
    end marker after each message, a header as the generation prompt."""
    template = JinjaChatTemplate(
        "{% for m in messages %}{% set content = '<|h|>' + m['role'] + '<|/h|>\n\n' + "
        "m['content'] | trim + '<|eot|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + "
        "content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|h|>assistant<|/h|>\n\n' }}{% endif %}", "llama3", {"bos_token": "<s>"})
    messages = [_user(" bad "), _assistant("fig "), _user("dig"), _assistant("jam")]
    assert template.render(messages[:1], True) == (
        "<s><|h|>user<|/h|>\n\nbad<|eot|><|h|>assistant<|/h|>\n\n")
    assert encode_conversation(tok, template, messages) == _reference(tok, [
        ("<s><|h|>user<|/h|>\n\nbad<|eot|><|h|>assistant<|/h|>\n\n", 0), ("fig<|eot|>", 1),
        ("<|h|>user<|/h|>\n\ndig<|eot|><|h|>assistant<|/h|>\n\n", 0), ("jam<|eot|>", 1),
        (None, 1)])


def test_template_that_rewrites_earlier_turns_is_refused(tok):
    rewriting = JinjaChatTemplate(
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[old]"
        "{% else %}{{ m['content'] }}{% endif %}{% endfor %}", "t.jinja")
    messages = [_user("a"), _assistant("b"), _user("c"), _assistant("d")]
    with pytest.raises(ValueError, match=r"^chat template t.jinja does not render message 3 as an "
                                         r"extension of the messages before it"):
        encode_conversation(tok, rewriting, messages)
    raising = JinjaChatTemplate("{{ raise_exception('only user turns') }}", "r.jinja")
    with pytest.raises(ValueError, match=r"^chat template r.jinja failed \(only user turns\)$"):
        encode_conversation(tok, raising, [_user("a"), _assistant("b")])
    with pytest.raises(DataError, match=r"^chat template bad does not compile"):
        JinjaChatTemplate("{% for %}", "bad")


def test_hf_tokenizer_chat_template_is_found(tmp_path, tok):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "</s>": 1, "user": 2, "assistant": 3, ":": 4, "hi": 5, "yo": 6}
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.add_special_tokens(["</s>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {{ eos_token }} "
                "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "</s>", "chat_template": template}))
    hf_tok = load_tokenizer(str(tmp_path))
    found = load_chat_template("auto", hf_tok)
    assert isinstance(found, JinjaChatTemplate)
    assert found.origin.endswith("tokenizer_config.json (chat_template)")
    ids, mask = encode_conversation(hf_tok, found, [_user("hi"), _assistant("yo")])
    # the template's own '</s>' ends the reply, so no extra EOD is appended
    assert (ids, mask) == ([2, 4, 5, 1, 3, 4, 6, 1], [0, 0, 0, 0, 0, 0, 1, 1])
    # a chat_template.jinja beside the tokenizer wins; a sentencepiece tokenizer gets PLAIN
    (tmp_path / "chat_template.jinja").write_text(CHATML)
    assert load_chat_template("auto", hf_tok).origin == str(tmp_path / "chat_template.jinja")
    assert load_chat_template("auto", tok) == PLAIN
    with pytest.raises(DataError, match=r"^--chat-template nope.jinja: no such file"):
        load_chat_template("nope.jinja", tok)


# --- records ---------------------------------------------------------------------------------------


def test_prompt_response_form_equals_messages_form():
    messages = [_user("What is 47+08?"), _assistant("055")]
    assert sft_conversation({"messages": messages}) == messages
    assert sft_conversation({"prompt": "What is 47+08?", "response": "055"}) == messages
    history = [{"role": "system", "content": "s"}, _user("q")]
    assert sft_conversation({"prompt": history, "response": "r"}) == history + [_assistant("r")]
    chosen, rejected = dpo_pair({"prompt": history, "chosen": "055", "rejected": "054"})
    assert (chosen, rejected) == (history + [_assistant("055")], history + [_assistant("054")])


@pytest.mark.parametrize("record,message", [
    ([1], "not a JSON object: write {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} or "
          "{\"prompt\": ..., \"response\": ...}"),
    ({"text": "x"}, "no 'messages' and no 'prompt' / 'response' (keys: 'text'): write "
                    "{\"messages\": [{\"role\": ..., \"content\": ...}, ...]} or "
                    "{\"prompt\": ..., \"response\": ...}"),
    ({"messages": []}, "'messages' is an empty list, not a list of {role, content} objects"),
    ({"messages": "hi"}, "'messages' is a str, not a list of {role, content} objects"),
    ({"messages": [{"role": "bot", "content": "x"}]},
     "messages[0] has role 'bot': use one of system, user, assistant"),
    ({"messages": [_user("a"), {"role": "assistant", "content": 5}]},
     "messages[1] has content of type int: write the content as a string"),
    ({"messages": [_user("a")]}, "'messages' has no assistant turn: add the assistant's reply (it "
                                 "carries the loss)"),
    ({"messages": [_user("a"), _assistant("b"), _user("c")]},
     "'messages' ends with a user turn: end the conversation with the assistant's reply"),
    ({"prompt": [_user("a"), _assistant("b")], "response": "c"},
     "'prompt' ends with an assistant turn: put the reply under the response key and end the "
     "prompt with the user's turn"),
    ({"prompt": "a", "response": None}, "'response' is a NoneType: write it as a string"),
])
def test_bad_sft_records(record, message):
    with pytest.raises(RecordError) as err:
        sft_conversation(record)
    assert str(err.value) == message


def test_bad_dpo_records():
    with pytest.raises(RecordError) as err:
        dpo_pair({"prompt": "a", "chosen": "b"})
    assert str(err.value) == ("no key 'rejected' (keys: 'prompt', 'chosen'): write {\"prompt\": ..., "
                              "\"chosen\": ..., \"rejected\": ...}")
    with pytest.raises(RecordError, match=r"^'chosen' is a list: write it as a string$"):
        dpo_pair({"prompt": "a", "chosen": ["b"], "rejected": "c"})


# --- padding and packing ---------------------------------------------------------------------------


def test_padding_to_a_block_multiple_is_supervised_eos():
    tokens, mask = pad_to_block_multiple(numpy.array([5, 6, 7, 1]), numpy.array([0, 0, 1, 1]), 3, 1)
    assert tokens.tolist() == [5, 6, 7, 1, 1, 1] and mask.tolist() == [0, 0, 1, 1, 1, 1]
    tokens, mask = pad_to_block_multiple(numpy.array([5, 6, 7]), numpy.array([0, 1, 1]), 3, 1)
    assert tokens.tolist() == [5, 6, 7] and mask.tolist() == [0, 1, 1]      # already a multiple
    assert pad_to_block_multiple(numpy.array([5]), numpy.array([0]), 4, 9)[1].tolist() == [0] * 4


def test_greedy_packing_against_a_brute_force_fill():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.choice((4, 8, 12, 16, 40)) for _ in range(rng.randint(1, 30))]
        bounds = pack_greedy(lengths, 16).tolist()
        windows, current = [], []
        for i, n in enumerate(lengths):
            if current and sum(min(lengths[j], 16) for j in current) + min(n, 16) > 16:
                windows.append(current)
                current = []
            current.append(i)
        windows.append(current)
        assert [list(range(a, b)) for a, b in zip(bounds, bounds[1:])] == windows


def test_packed_sample_fills_with_unsupervised_eos_of_its_own_document():
    conv = [(numpy.array([3, 4, 1, 1]), numpy.array([0, 1, 1, 1], dtype=bool)),
            (numpy.array([5, 1]), numpy.array([1, 1], dtype=bool))]
    s = packed_sample(conv, 8, eos_id=1)
    assert s["tokens"].tolist() == [3, 4, 1, 1, 5, 1, 1, 1]
    assert s["loss_mask"].tolist() == [0, 1, 1, 1, 1, 1, 0, 0]
    assert s["document_ids"].tolist() == [0, 0, 0, 0, 1, 1, 2, 2]


# --- readers ---------------------------------------------------------------------------------------


def _conversations(n, seed):
    rng = random.Random(seed)
    words = synthetic_lines(4 * n, seed=seed, max_words=12)
    records = []
    for i in range(n):
        turns = rng.choice((1, 1, 2))
        messages = [{"role": "system", "content": "be brief"}] if rng.random() < 0.3 else []
        for t in range(turns):
            messages += [_user(words[4 * i + 2 * t]), _assistant(words[4 * i + 2 * t + 1])]
        records.append({"messages": messages} if rng.random() < 0.7 else
                       {"prompt": messages[:-1] if len(messages) > 2 else messages[-2]["content"],
                        "response": messages[-1]["content"]})
    return records


@pytest.fixture(scope="module")
def sft_data(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("sftdata")
    records = _conversations(60, seed=5) + [{"prompt": " ".join(["bad cab"] * 40), "response": "x"}]
    write_jsonl_records(str(root / "c.jsonl"), records)
    stats = preprocess_jsonl(str(root / "c.jsonl"), tok.path, str(root / "c"), format="sft",
                             log=io.StringIO())
    expected = [encode_conversation(tok, PLAIN, sft_conversation(r)) for r in records]
    return stats.output_prefix, expected


def test_sft_reader_packs_whole_conversations_with_their_masks(sft_data, tok):
    from megatron_dllm.data.sft_dataset import SFTDataset

    prefix, expected = sft_data
    long = sum(len(ids) + (-len(ids) % 16) > 64 for ids, _ in expected)
    assert 1 <= long < 20
    with pytest.warns(UserWarning, match=rf"^{long} of 61 conversations of .* are longer than "
                                         r"--seq-length 64 after padding to a multiple of 16"):
        ds = SFTDataset(prefix, 64, tok.eod_id, block_size=16, seed=7)
    assert ds.truncated == long
    seen = []
    for idx in range(len(ds)):
        sample = ds[idx]
        assert set(sample) == {"tokens", "loss_mask", "document_ids"}
        assert sample["tokens"].dtype == torch.long and sample["loss_mask"].dtype == torch.bool
        tokens, mask, docs = (sample[k].tolist() for k in ("tokens", "loss_mask", "document_ids"))
        at = 0
        for k, j in enumerate(ds.window(idx).tolist()):
            ids, loss = expected[j]
            pad = -len(ids) % 16
            n = min(len(ids) + pad, 64)
            want_ids = (ids + [tok.eod_id] * pad)[:n]
            want_loss = (loss + [1] * pad)[:n]
            assert tokens[at:at + n] == want_ids and mask[at:at + n] == want_loss
            assert docs[at:at + n] == [k] * n and at % 16 == 0
            at += n
            seen.append(j)
        assert tokens[at:] == [tok.eod_id] * (64 - at) and not any(mask[at:])
        # document ids change exactly at conversation boundaries (and at the fill)
        changes = [i for i in range(1, 64) if docs[i] != docs[i - 1]]
        assert len(changes) == len(ds.window(idx)) - (at == 64)
    assert sorted(seen) == list(range(61))                # every conversation once per epoch


def test_sft_reader_is_a_function_of_its_seed(sft_data, tok):
    from megatron_dllm.data.sft_dataset import SFTDataset

    prefix, _ = sft_data
    a = SFTDataset(prefix, 64, tok.eod_id, block_size=16, seed=3, document_range=(0, 60))
    b = SFTDataset(prefix, 64, tok.eod_id, block_size=16, seed=3, document_range=(0, 60))
    c = SFTDataset(prefix, 64, tok.eod_id, block_size=16, seed=4, document_range=(0, 60))
    assert all(torch.equal(a[i]["tokens"], b[i]["tokens"]) for i in range(len(a)))
    assert [a.window(i).tolist() for i in range(len(a))] != [c.window(i).tolist() for i in range(len(c))]
    long = SFTDataset(prefix, 64, tok.eod_id, block_size=16, seed=3, num_samples=3 * len(a),
                      document_range=(0, 60))
    assert len(long) >= 3 * len(a)
    assert [long.window(i).tolist() for i in range(len(a))] == [a.window(i).tolist() for i in range(len(a))]
    later = collections.Counter(j for i in range(len(a), len(long)) for j in long.window(i).tolist())
    assert sorted(later) == list(range(60)) and len(set(later.values())) == 1   # whole epochs
    assert [long.window(i).tolist() for i in range(len(a), 2 * len(a))] != [
        a.window(i).tolist() for i in range(len(a))]                              # reshuffled
    with pytest.raises(DataError, match=r"^--seq-length 60 must be a positive multiple of the SFT "
                                        r"block size 16"):
        SFTDataset(prefix, 60, tok.eod_id, block_size=16)
    with pytest.raises(DataError, match=r"does not hold 2 sequence\(s\) per document, as --format dpo"):
        from megatron_dllm.data.sft_dataset import DPOPairDataset

        DPOPairDataset(prefix, 64, tok.eod_id)


def test_dpo_reader_keeps_pairs_aligned(tok, tmp_path):
    from megatron_dllm.data.sft_dataset import DPOPairDataset

    task = AdditionTask(max_digits=2, num_test=50, seed=0)
    records = dpo_records(task, 40, seed=9)
    records[3]["prompt"] = [_user("bad"), _assistant("fig"), _user("What is 01+02?")]
    write_jsonl_records(str(tmp_path / "p.jsonl"), records)
    stats = preprocess_jsonl(str(tmp_path / "p.jsonl"), tok.path, str(tmp_path / "p"),
                             format="dpo", log=io.StringIO())
    ds = DPOPairDataset(stats.output_prefix, 64, tok.eod_id, block_size=8, seed=1)
    assert ds.truncated == 0
    assert len(ds) == 40 and sorted(ds.pair(i) for i in range(40)) == list(range(40))
    for idx in range(40):
        record = records[ds.pair(idx)]
        sample = ds[idx]
        for side, conversation in zip(("chosen", "rejected"), dpo_pair(record)):
            ids, loss = encode_conversation(tok, PLAIN, conversation, supervise="last")
            pad = -len(ids) % 8
            got = sample[side]
            assert got["tokens"].tolist()[:len(ids) + pad] == ids + [tok.eod_id] * pad
            assert got["loss_mask"].tolist() == loss + [True] * pad + [False] * (64 - len(ids) - pad)
            assert got["document_ids"].tolist() == [0] * (len(ids) + pad) + [1] * (64 - len(ids) - pad)
            # loss exactly on the reply's tokens and its EOD (and the padding)
            assert tok.decode([t for t, m in zip(ids, loss) if m][:-1]) == record[side]
        # both sides start with the same prompt tokens, which carry no loss
        n = len(encode_prompt(tok, PLAIN, dpo_pair(record)[0][:-1]))
        assert torch.equal(sample["chosen"]["tokens"][:n], sample["rejected"]["tokens"][:n])
        assert not sample["chosen"]["loss_mask"][:n].any() and sample["chosen"]["loss_mask"][n]


# --- the addition task as chat data ----------------------------------------------------------------


def test_addition_chat_records():
    task = AdditionTask(max_digits=2, num_test=100, seed=0)
    sft = sft_records(task, 300, seed=1)
    assert sft[0]["messages"][0]["content"].startswith("What is ")
    for record in sft:
        question, answer = record["messages"][0]["content"], record["messages"][1]["content"]
        a, b = question[len("What is "):-1].split("+")
        assert len(a) == len(b) == 2 and answer == f"{int(a) + int(b):03d}"
        assert (int(a), int(b)) in set(task.train_pairs)
    dpo = dpo_records(task, 500, seed=2)
    for record in dpo:
        a, b = (int(x) for x in record["prompt"][len("What is "):-1].split("+"))
        assert task.is_correct(a, b, record["chosen"]) and not task.is_correct(a, b, record["rejected"])
        diff = [i for i, (x, y) in enumerate(zip(record["chosen"], record["rejected"])) if x != y]
        assert len(record["rejected"]) == 3 and len(diff) == 1
        assert (int(record["chosen"][diff[0]]) - int(record["rejected"][diff[0]])) % 10 in (1, 9)
    held_out = dpo_records(task, 0, seed=2, split="test")
    assert [r["prompt"] for r in held_out] == [f"What is {a:02d}+{b:02d}?" for a, b in task.test_problems()]
    assert dpo_records(task, 20, seed=2) == dpo_records(task, 20, seed=2) != dpo_records(task, 20, seed=3)
    assert near_miss("9", random.Random(0)) in ("8", "0")


def test_split_ranges_and_dpo_epochs(sft_data, tok, tmp_path):
    from megatron_dllm.data.sft_dataset import DPOPairDataset, split_document_ranges

    prefix, _ = sft_data
    assert split_document_ranges(prefix, "50,11,0") == [(0, 50), (50, 61), None]
    write_jsonl_records(str(tmp_path / "p.jsonl"),
                        dpo_records(AdditionTask(max_digits=1, num_test=5), 7, seed=1))
    stats = preprocess_jsonl(str(tmp_path / "p.jsonl"), tok.path, str(tmp_path / "p"),
                             format="dpo", log=io.StringIO())
    assert split_document_ranges(stats.output_prefix, "6,1,0", format="dpo") == [(0, 6), (6, 7), None]
    ds = DPOPairDataset(stats.output_prefix, 64, tok.eod_id, block_size=8, seed=2, num_samples=15,
                        document_range=(0, 6))
    order = [ds.pair(i) for i in range(len(ds))]
    assert len(ds) == 18 and [sorted(order[k:k + 6]) for k in (0, 6, 12)] == [list(range(6))] * 3
    assert order[:6] != order[6:12]


def test_addition_sft_data_supervises_exactly_the_answer(tok, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    task = AdditionTask(max_digits=2, num_test=100, seed=0)
    records = sft_records(task, 50, seed=4)
    write_jsonl_records(str(tmp_path / "a.jsonl"), records)
    stats = preprocess_jsonl(str(tmp_path / "a.jsonl"), tok.path, str(tmp_path / "a"),
                             format="sft", log=io.StringIO())
    tokens = IndexedDataset(stats.output_prefix + "_tokens")
    mask = IndexedDataset(stats.output_prefix + "_lossmask")
    for i, record in enumerate(records):
        ids, loss = tokens[i].tolist(), mask[i].astype(bool).tolist()
        question, answer = (m["content"] for m in record["messages"])
        prompt = encode_prompt(tok, PLAIN, [_user(question)])
        assert ids[:len(prompt)] == prompt and not any(loss[:len(prompt)])
        assert all(loss[len(prompt):]) and ids[-1] == tok.eod_id
        assert tok.decode(ids[len(prompt):-1]) == answer


def test_build_addition_chat_data(tok, tmp_path):
    from megatron_dllm.data.addition_chat import build_addition_chat_data
    from megatron_dllm.data.sft_dataset import DPOPairDataset, SFTDataset

    task = AdditionTask(max_digits=2, num_test=30, seed=0)
    data = build_addition_chat_data(str(tmp_path / "chat"), tok.path, task, sft_count=40,
                                    dpo_count=20, seed=5)
    assert (data.sft_prefix, data.dpo_prefix) == (str(tmp_path / "chat" / "addition_sft"),
                                                  str(tmp_path / "chat" / "addition_dpo"))
    assert (data.sft_conversations, data.dpo_pairs) == (40, 20)
    with open(data.sft_test_jsonl) as handle:
        held_out = [json.loads(line)["messages"][0]["content"] for line in handle]
    assert held_out == [f"What is {a:02d}+{b:02d}?" for a, b in task.test_problems()]
    sft = SFTDataset(data.sft_prefix, 128, tok.eod_id, block_size=32)
    assert sum(len(sft.window(i)) for i in range(len(sft))) == 40
    assert len(DPOPairDataset(data.dpo_prefix, 64, tok.eod_id)) == 20
