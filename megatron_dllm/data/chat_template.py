"""Render a conversation into token ids and a per-token loss mask, for SFT and DPO data.

    template = load_chat_template("auto", tok)     # the tokenizer's Jinja template, else PLAIN
    ids, mask = encode_conversation(tok, template, messages)       # every assistant turn supervised
    ids, mask = encode_conversation(tok, template, messages, supervise="last")   # DPO: last turn only
    prompt_ids = encode_prompt(tok, template, messages[:-1])       # what a generator is given

A conversation is cut into pieces at the start and the end of every assistant response; each
piece is tokenised on its own (so the boundary between prompt and response is a token boundary and
the loss mask is exact), and the ids are concatenated:

    [prompt text 0] [response 0] ... [prompt text k] [response k] EOD

The plain template (``PLAIN``, used when the tokenizer has no chat template):
  * a system or user turn is the text ``"{role}: {content}\\n"``;
  * an assistant turn is the text ``"assistant: "`` (prompt), then its content (response), then the
    tokenizer's end-of-document id (response: the EOD ends each assistant turn);
  * prompt text is everything between responses, e.g. ``"user: What is 47+08?\\nassistant: "``.

A Jinja chat template (HF ``tokenizer_config.json`` ``chat_template`` or a ``chat_template.jinja``
beside ``tokenizer.json``, or a file given with ``--chat-template``) is rendered as HF transformers
does (sandboxed, ``trim_blocks``, ``lstrip_blocks``). Response k is the text the full rendering of
messages[:k+1] adds to the rendering of messages[:k] with ``add_generation_prompt=True`` (so the
template's own end-of-turn text is part of the response); one EOD id closes the conversation
unless its last token already is EOD. A template whose renderings are not prefixes of each other
cannot be cut like this and is refused.

Loss mask: 1 on the response pieces and EOD ids of supervised assistant turns, 0 elsewhere.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence, Tuple

from megatron_dllm.data.errors import DataError
from megatron_dllm.data.tokenizer import read_tokenizer_config, special_token_name

ROLES = ("system", "user", "assistant")
PLAIN = "plain"


class JinjaChatTemplate:
    """A compiled Jinja chat template and the special-token strings it may refer to."""

    def __init__(self, source: str, origin: str, special_tokens: Optional[dict] = None) -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(value, indent=None):
            return json.dumps(value, ensure_ascii=False, indent=indent)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        self.origin = origin
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = env.from_string(source)
        except jinja2.exceptions.TemplateError as exc:
            raise DataError(f"chat template {origin} does not compile ({exc}): fix it or pass "
                            f"--chat-template plain") from exc

    def render(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        """The template's text for ``messages``; ValueError (message) when the template raises."""
        import jinja2

        try:
            return self._template.render(messages=list(messages),
                                         add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except jinja2.exceptions.TemplateError as exc:
            raise ValueError(f"chat template {self.origin} failed ({exc})") from None

    def __repr__(self) -> str:
        return f"JinjaChatTemplate({self.origin})"


def _template_of_tokenizer(tokenizer_path: str) -> Tuple[Optional[str], str, dict]:
    """(template source or None, where it came from, special-token strings) of a HF tokenizer."""
    folder = tokenizer_path if os.path.isdir(tokenizer_path) else os.path.dirname(
        os.path.abspath(tokenizer_path))
    config = read_tokenizer_config(tokenizer_path)
    specials = {key: special_token_name(config.get(key))
                for key in ("bos_token", "eos_token", "pad_token", "unk_token")}
    specials = {key: value for key, value in specials.items() if value is not None}
    jinja_path = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jinja_path):
        with open(jinja_path, encoding="utf-8") as handle:
            return handle.read(), jinja_path, specials
    source = config.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    if isinstance(source, str) and source.strip():
        return source, f"{os.path.join(folder, 'tokenizer_config.json')} (chat_template)", specials
    return None, "", specials


def load_chat_template(spec: str, tok) -> object:
    """The template to render conversations with.

    Args:
        spec: ``"auto"`` (the HF tokenizer's chat template where it has one, else ``PLAIN``),
            ``"plain"`` (``PLAIN``), or the path of a Jinja template file.
        tok: the loaded Tokenizer (its ``kind`` and ``path`` say where to look).

    Returns:
        ``PLAIN`` or a JinjaChatTemplate.
    """
    if spec == PLAIN:
        return PLAIN
    if spec == "auto":
        if tok.kind != "hf":
            return PLAIN
        source, origin, specials = _template_of_tokenizer(tok.path)
        return PLAIN if source is None else JinjaChatTemplate(source, origin, specials)
    if not os.path.isfile(spec):
        raise DataError(f"--chat-template {spec}: no such file: pass auto, plain or the path of a "
                        f"Jinja template file")
    with open(spec, encoding="utf-8") as handle:
        source = handle.read()
    specials = _template_of_tokenizer(tok.path)[2] if tok.kind == "hf" else {}
    return JinjaChatTemplate(source, spec, specials)


def _pieces(template, messages: Sequence[dict]) -> List[Tuple[str, object]]:
    """The conversation cut at response boundaries: ``('prompt', text)``,
    ``('response', (message index, text))`` and, plain template only, ``('eod', message index)``."""
    pieces: List[Tuple[str, object]] = []
    if template == PLAIN:
        prompt = ""
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                pieces.append(("prompt", prompt + "assistant: "))
                pieces.append(("response", (index, message["content"])))
                pieces.append(("eod", index))
                prompt = ""
            else:
                prompt += f"{message['role']}: {message['content']}\n"
        if prompt:
            pieces.append(("prompt", prompt))
        return pieces
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        with_prompt = template.render(messages[:index], add_generation_prompt=True)
        full = template.render(messages[:index + 1], add_generation_prompt=False)
        if not with_prompt.startswith(done) or not full.startswith(with_prompt):
            raise ValueError(
                f"chat template {template.origin} does not render message {index} as an extension "
                f"of the messages before it, so its response cannot be cut out: pass "
                f"--chat-template plain or a template that appends turns")
        pieces.append(("prompt", with_prompt[len(done):]))
        pieces.append(("response", (index, full[len(with_prompt):])))
        done = full
    rest = template.render(messages, add_generation_prompt=False)
    if not rest.startswith(done):
        raise ValueError(f"chat template {template.origin} does not render the conversation as an "
                         f"extension of its turns: pass --chat-template plain")
    if rest[len(done):]:
        pieces.append(("prompt", rest[len(done):]))
    return pieces


def _encode_pieces(tok, pieces, supervised) -> Tuple[List[int], List[int]]:
    ids: List[int] = []
    mask: List[int] = []
    for kind, value in pieces:
        if kind == "prompt":
            new, on = tok.encode(value), 0
        elif kind == "response":
            new, on = tok.encode(value[1]), int(supervised(value[0]))
        else:
            new, on = [tok.eod_id], int(supervised(value))
        ids.extend(new)
        mask.extend([on] * len(new))
    return ids, mask


def encode_conversation(tok, template, messages: Sequence[dict],
                        supervise: str = "all") -> Tuple[List[int], List[int]]:
    """(token ids, loss mask) of a conversation, both of the same length.

    Args:
        tok: a Tokenizer (``encode``, ``eod_id``).
        template: ``PLAIN`` or a JinjaChatTemplate.
        messages: validated ``{"role", "content"}`` dicts (roles in ROLES).
        supervise: ``"all"``: every assistant turn has loss (SFT); ``"last"``: only the last
            message, which must be the assistant's (DPO).

    Raises:
        ValueError: the template raised or cannot be cut at turn boundaries (message only).
    """
    if supervise not in ("all", "last"):
        raise ValueError(f"supervise must be 'all' or 'last', got {supervise!r}")
    last = len(messages) - 1
    supervised = (lambda index: True) if supervise == "all" else (lambda index: index == last)
    ids, mask = _encode_pieces(tok, _pieces(template, messages), supervised)
    if template != PLAIN and (not ids or ids[-1] != tok.eod_id):
        ids.append(tok.eod_id)
        mask.append(int(messages[-1]["role"] == "assistant" and supervised(last)))
    return ids, mask


def encode_prompt(tok, template, messages: Sequence[dict]) -> List[int]:
    """Token ids a generator is given to answer ``messages`` (which end with a non-assistant
    turn): exactly the ids ``encode_conversation`` puts before the next assistant response."""
    answer = len(messages)
    pieces = _pieces(template, list(messages) + [{"role": "assistant", "content": ""}])
    cut = next(i for i, (kind, value) in enumerate(pieces)
               if kind == "response" and value[0] == answer)
    return _encode_pieces(tok, pieces[:cut], lambda index: False)[0]
