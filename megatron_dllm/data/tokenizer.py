"""Tokenizers: sentencepiece ``.model`` files (required dependency) and HF ``tokenizer.json``
files (optional ``tokenizers`` package), behind one small interface.

    tok = load_tokenizer("tokenizer.model")          # or "tokenizer.json" / a directory
    ids = tok.encode("some text")                    # list[int], no BOS / EOS added
    tok.eod_id, tok.mask_token_id, tok.pad_id, tok.vocab_size

``eod_id`` is the token appended after every document by tools/preprocess_data.py.
``mask_token_id`` is the [MASK] token of masked diffusion: found by looking up the pieces
``MASK_TOKEN_CANDIDATES`` unless given explicitly; ``require_mask_token`` fails when there is none.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

from megatron_dllm.data.errors import DataError

MASK_TOKEN_CANDIDATES = ("<|mask|>", "[MASK]", "<mask>")
"""Pieces looked up, in this order, when no mask token id is given."""

EOD_TOKEN_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")
"""HF tokenizers only: pieces tried for the end-of-document token when tokenizer_config.json
does not name an ``eos_token``."""

PAD_TOKEN_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")


class Tokenizer:
    """Common interface. Subclasses set ``vocab_size``, ``eod_id``, ``pad_id``, ``mask_token_id``.

    Attributes:
        path: the file the tokenizer was read from.
        kind: 'sentencepiece' or 'hf'.
        vocab_size: number of token ids (ids are in [0, vocab_size)).
        eod_id: end-of-document id (appended after each document when preprocessing).
        pad_id: id placed at padded positions (the tokenizer's pad token, else ``eod_id``);
            padded positions always have ``loss_mask`` False, so the value only has to be a
            valid embedding row.
        mask_token_id: the [MASK] id, or None when the tokenizer has none.
    """

    path: str
    kind: str
    vocab_size: int
    eod_id: int
    pad_id: int
    mask_token_id: Optional[int]

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` (no BOS / EOS added)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids."""
        raise NotImplementedError

    def piece_to_id(self, piece: str) -> Optional[int]:
        """The id of an exact vocabulary piece, or None when it is not in the vocabulary."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={self.path!r}, vocab_size={self.vocab_size}, "
                f"eod_id={self.eod_id}, pad_id={self.pad_id}, mask_token_id={self.mask_token_id})")

    def _set_mask_token(self, mask_token_id: Optional[int]) -> None:
        if mask_token_id is None:
            self.mask_token_id = None
            for piece in MASK_TOKEN_CANDIDATES:
                found = self.piece_to_id(piece)
                if found is not None:
                    self.mask_token_id = found
                    break
            return
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int):
            raise DataError(f"--dllm-mask-token-id must be an integer, got {mask_token_id!r}")
        if not 0 <= mask_token_id < self.vocab_size:
            raise DataError(
                f"--dllm-mask-token-id {mask_token_id} is outside the vocabulary of tokenizer "
                f"{self.path} (ids 0..{self.vocab_size - 1}): pass an id of the tokenizer's mask token")
        if mask_token_id == self.eod_id:
            raise DataError(
                f"--dllm-mask-token-id {mask_token_id} is the end-of-document id of tokenizer "
                f"{self.path}: the mask token must be a token of its own")
        self.mask_token_id = mask_token_id


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model; ``eod_id`` is its EOS id (which must be defined)."""

    kind = "sentencepiece"

    def __init__(self, path: str, mask_token_id: Optional[int] = None) -> None:
        import sentencepiece

        self.path = path
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (OSError, RuntimeError) as exc:
            raise DataError(
                f"tokenizer {path} is not a readable sentencepiece model ({exc}): pass "
                f"--tokenizer-model PATH to a sentencepiece .model or a HF tokenizer.json") from exc
        self.vocab_size = int(self._sp.GetPieceSize())
        eos = int(self._sp.eos_id())
        if eos < 0:
            raise DataError(
                f"sentencepiece tokenizer {path} has no EOS token, which marks document ends: "
                f"train it with eos_id >= 0 (e.g. eos_id=1), or use a tokenizer that has one")
        self.eod_id = eos
        pad = int(self._sp.pad_id())
        self.pad_id = pad if pad >= 0 else eos
        self._set_mask_token(mask_token_id)

    def encode(self, text: str) -> List[int]:
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])

    def piece_to_id(self, piece: str) -> Optional[int]:
        idx = int(self._sp.PieceToId(piece))
        if 0 <= idx < self.vocab_size and self._sp.IdToPiece(idx) == piece:
            return idx
        return None

    def __getstate__(self):
        return {"path": self.path, "mask_token_id": self.mask_token_id}

    def __setstate__(self, state):
        self.__init__(state["path"], state["mask_token_id"])


def special_token_name(value) -> Optional[str]:
    """tokenizer_config.json writes special tokens as a string or as {"content": str, ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_tokenizer_config(path: str) -> dict:
    """The ``tokenizer_config.json`` beside a HF ``tokenizer.json`` (``path``: the file or its
    directory) as a dict; ``{}`` when there is none; DataError when it is not valid JSON."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config_path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(config_path):
        return {}
    try:
        with open(config_path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise DataError(f"{config_path} is not valid JSON ({exc}): fix or remove it") from exc


class HFTokenizer(Tokenizer):
    """A HF ``tokenizer.json`` read with the ``tokenizers`` package (optional dependency).

    The end-of-document token is ``eos_token`` of a ``tokenizer_config.json`` beside the file,
    else the first of ``EOD_TOKEN_CANDIDATES`` in the vocabulary.
    """

    kind = "hf"

    def __init__(self, path: str, mask_token_id: Optional[int] = None) -> None:
        try:
            import tokenizers
        except ImportError as exc:
            raise DataError(
                f"tokenizer {path} is a HF tokenizer.json, which needs the 'tokenizers' package: "
                f"pip install tokenizers (or pass a sentencepiece .model)") from exc
        self.path = path
        try:
            self._tok = tokenizers.Tokenizer.from_file(path)
        except Exception as exc:  # the Rust side raises its own Exception type
            raise DataError(
                f"tokenizer {path} is not a readable HF tokenizer.json ({exc}): pass "
                f"--tokenizer-model PATH to a HF tokenizer.json or a sentencepiece .model") from exc
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        config = read_tokenizer_config(path)
        self.eod_id = self._find(config.get("eos_token"), EOD_TOKEN_CANDIDATES)
        if self.eod_id is None:
            raise DataError(
                f"HF tokenizer {path} has no end-of-document token: name it as 'eos_token' in a "
                f"tokenizer_config.json beside it, or add one of {list(EOD_TOKEN_CANDIDATES)}")
        pad = self._find(config.get("pad_token"), PAD_TOKEN_CANDIDATES)
        self.pad_id = pad if pad is not None else self.eod_id
        self._set_mask_token(mask_token_id)

    def _find(self, configured, candidates) -> Optional[int]:
        name = special_token_name(configured)
        for piece in ([name] if name else []) + list(candidates):
            found = self.piece_to_id(piece)
            if found is not None:
                return found
        return None

    def encode(self, text: str) -> List[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def piece_to_id(self, piece: str) -> Optional[int]:
        idx = self._tok.token_to_id(piece)
        return None if idx is None else int(idx)

    def __getstate__(self):
        return {"path": self.path, "mask_token_id": self.mask_token_id}

    def __setstate__(self, state):
        self.__init__(state["path"], state["mask_token_id"])


def resolve_tokenizer_path(path: str) -> tuple:
    """(kind, file) for a tokenizer path: 'sentencepiece' or 'hf', and the file to read.

    A directory is searched for ``tokenizer.json`` (HF), then ``tokenizer.model`` (sentencepiece).
    """
    if not path:
        raise DataError("no tokenizer given: pass --tokenizer-model PATH (a sentencepiece .model, "
                        "a HF tokenizer.json or a directory holding one)")
    if os.path.isdir(path):
        for name, kind in (("tokenizer.json", "hf"), ("tokenizer.model", "sentencepiece")):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return kind, candidate
        raise DataError(
            f"tokenizer directory {path} holds neither tokenizer.json nor tokenizer.model: pass "
            f"--tokenizer-model PATH to a sentencepiece .model or a HF tokenizer.json")
    if not os.path.isfile(path):
        raise DataError(
            f"tokenizer file {path} does not exist: pass --tokenizer-model PATH to a sentencepiece "
            f".model, a HF tokenizer.json or a directory holding one")
    return ("hf" if path.endswith(".json") else "sentencepiece"), path


def load_tokenizer(path: str, mask_token_id: Optional[int] = None) -> Tokenizer:
    """Read a tokenizer.

    Args:
        path: a sentencepiece ``.model`` file, a HF ``tokenizer.json`` file, or a directory
            holding ``tokenizer.json`` or ``tokenizer.model``.
        mask_token_id: the [MASK] id; None looks up '<|mask|>', '[MASK]', '<mask>' in that order
            (``mask_token_id`` stays None when none is in the vocabulary).

    Raises:
        DataError: missing or unreadable file, no end-of-document token, mask id out of range.
    """
    kind, file = resolve_tokenizer_path(path)
    if kind == "hf":
        return HFTokenizer(file, mask_token_id)
    return SentencePieceTokenizer(file, mask_token_id)


def require_mask_token(tok: Tokenizer) -> int:
    """``tok.mask_token_id``, or DataError when the tokenizer has no mask token."""
    if tok.mask_token_id is None:
        raise DataError(
            f"tokenizer {tok.path} has no mask token: add '<|mask|>' to the tokenizer or pass "
            f"--dllm-mask-token-id ID")
    return tok.mask_token_id
