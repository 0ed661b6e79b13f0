"""JSON records of SFT and DPO data, checked and turned into conversations.

SFT, one of:
    {"messages": [{"role": "user", "content": "What is 47+08?"}, {"role": "assistant", "content": "055"}]}
    {"prompt": "What is 47+08?", "response": "055"}
DPO:
    {"prompt": "What is 47+08?", "chosen": "055", "rejected": "054"}
where a ``prompt`` is a string (one user turn) or a list of messages that does not end with an
assistant turn. Roles are ``system``, ``user`` and ``assistant``; contents are strings.

Every check raises ``RecordError`` with a message that says what is wrong and how to fix it; the
preprocessing run prefixes it with ``file:line``.
"""

from __future__ import annotations

from typing import List, Tuple

from megatron_dllm.data.chat_template import ROLES

SFT_FORMS = ("{\"messages\": [{\"role\": ..., \"content\": ...}, ...]} or "
             "{\"prompt\": ..., \"response\": ...}")
DPO_FORM = "{\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}"


class RecordError(ValueError):
    """A record that is not SFT / DPO data; the message names the field and the fix."""


def _keys(record: dict) -> str:
    return ", ".join(repr(k) for k in list(record)[:6]) or "none"


def check_messages(value, field: str = "messages") -> List[dict]:
    """``value`` as a list of ``{"role", "content"}`` dicts (extra keys dropped)."""
    if not isinstance(value, list) or not value:
        what = "an empty list" if isinstance(value, list) else f"a {type(value).__name__}"
        raise RecordError(f"{field!r} is {what}, not a list of {{role, content}} objects")
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise RecordError(f"{where} is a {type(message).__name__}, not a {{role, content}} object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RecordError(f"{where} has role {role!r}: use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RecordError(f"{where} has content of type {type(content).__name__}: write the "
                              f"content as a string")
        out.append({"role": role, "content": content})
    return out


def _prompt_messages(record: dict) -> List[dict]:
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = check_messages(prompt, "prompt")
    if messages[-1]["role"] == "assistant":
        raise RecordError("'prompt' ends with an assistant turn: put the reply under the response "
                          "key and end the prompt with the user's turn")
    return messages


def _string(record: dict, key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise RecordError(f"{key!r} is a {type(value).__name__}: write it as a string")
    return value


def sft_conversation(record) -> List[dict]:
    """The messages of an SFT record; the last one is the assistant's."""
    if not isinstance(record, dict):
        raise RecordError(f"not a JSON object: write {SFT_FORMS}")
    if "messages" in record:
        messages = check_messages(record["messages"])
        if not any(m["role"] == "assistant" for m in messages):
            raise RecordError("'messages' has no assistant turn: add the assistant's reply (it "
                              "carries the loss)")
        if messages[-1]["role"] != "assistant":
            raise RecordError(f"'messages' ends with a {messages[-1]['role']} turn: end the "
                              f"conversation with the assistant's reply")
        return messages
    if "prompt" in record and "response" in record:
        return _prompt_messages(record) + [
            {"role": "assistant", "content": _string(record, "response")}]
    raise RecordError(f"no 'messages' and no 'prompt' / 'response' (keys: {_keys(record)}): "
                      f"write {SFT_FORMS}")


def dpo_pair(record) -> Tuple[List[dict], List[dict]]:
    """(chosen conversation, rejected conversation) of a DPO record: the prompt messages followed
    by the chosen or the rejected assistant reply."""
    if not isinstance(record, dict):
        raise RecordError(f"not a JSON object: write {DPO_FORM}")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
    if missing:
        raise RecordError(f"no key {missing[0]!r} (keys: {_keys(record)}): write {DPO_FORM}")
    prompt = _prompt_messages(record)
    return tuple(prompt + [{"role": "assistant", "content": _string(record, key)}]
                 for key in ("chosen", "rejected"))
