"""Hugging Face ``tokenizer.json`` for byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM), no download.

:class:`HFTokenizer` reads the one-file format of the ``tokenizers`` library and reproduces its
``encode``/``decode`` for the byte-level BPE tokenizers that current open models ship. The
pipeline is ``tokenizers``' own, step by step:

1. **Added tokens** (``added_tokens``: ``<|endoftext|>``, ``<|begin_of_text|>``, ``<|im_start|>``,
   ...) are cut out of the text first, longest match first, leftmost first, as the library's
   Aho-Corasick matcher does, honouring each token's ``lstrip``, ``rstrip`` and ``single_word``.
   Tokens with ``normalized: false`` are matched in the raw text, those with ``normalized: true``
   in each remaining piece after normalization. Special ones (``special: true``) are matched
   only with ``encode(..., allowed_special=True)``; non-special added tokens always are.
2. **Normalizer**: none, or ``NFC`` (Qwen2), applied to each piece between added tokens.
3. **Pre-tokenizer**: ``ByteLevel`` alone (GPT-2: its ``use_regex`` splits with GPT-2's pattern,
   :data:`~scratchlm.data.tokenizers.GPT2_SPLIT_PATTERN`; ``add_prefix_space`` puts a space in
   front of each piece that lacks one), or a ``Sequence`` of ``Split`` (a ``Regex`` or
   ``String`` pattern, behaviour ``Isolated``, ``invert`` false: Llama 3, Qwen2) and ``Digits``
   steps ending in ``ByteLevel`` (SmolLM). The regular expressions are Oniguruma's; see
   :func:`translate_regex` below.
4. **BPE model** (``model.type == "BPE"``, ``vocab`` and ``merges``, merges written ``"a b"`` or
   ``["a", "b"]``): each pre-token becomes its UTF-8 bytes in GPT-2's byte alphabet
   (:func:`~scratchlm.data.gpt2_tokenizer.bytes_to_unicode`), merged by rank exactly as
   :class:`~scratchlm.data.gpt2_tokenizer.GPT2Tokenizer` does (the same code). With
   ``ignore_merges`` (Llama 3) a pre-token that is itself in the vocabulary is one token, unmerged.
   ``unk_token`` / ``fuse_unk`` are honoured for bytes the vocabulary lacks.
5. **Post-processor**: only with ``encode(..., add_special_tokens=True)``, the ids that
   ``TemplateProcessing`` (Llama 3's ``<|begin_of_text|>``), ``RobertaProcessing`` or
   ``BertProcessing`` put around a single sequence; ``ByteLevel`` adds nothing.
6. **Decoder** ``ByteLevel``: tokens back to bytes, UTF-8 decoded with ``errors='replace'``.

So ``encode(text, allowed_special=True, add_special_tokens=True)`` gives the ids of
``tokenizers``' default ``Tokenizer.encode(text).ids``; the defaults here
(``allowed_special=False``, ``add_special_tokens=False``) give those of
``encode(text, add_special_tokens=False)`` with the tokenizer's ``encode_special_tokens`` set
(``transformers``' ``split_special_tokens=True``): the literal text ``<|endoftext|>`` in user
input stays text unless asked for, as in the other tokenizers of this package. ``decode(ids,
skip_special_tokens=...)`` gives ``tokenizers``' ``decode``.

Anything else is refused with a ``ValueError`` naming the file, the field and the value:
another model type (Unigram, WordPiece, WordLevel), SentencePiece-style BPE (``byte_fallback``,
``Metaspace``), ``continuing_subword_prefix`` / ``end_of_word_suffix``, BPE dropout, another
normalizer, pre-tokenizer, post-processor or decoder, a regular expression construct the
translator does not know. A file is read as hostile (a regular file of at most
:data:`~scratchlm.data.tokenizers.MAX_TOKENIZER_BYTES`, JSON nesting bounded, every field
checked), and ids are checked to be what ``tokenizers`` would give: the model's ``vocab`` uses
exactly ``0..n-1`` and each added token has the vocabulary's id for its text or, if new, the next
id after the vocabulary in file order (``tokenizers`` renumbers any other, logging a warning).
Two things of ``tokenizer.json`` are deliberately not applied: ``truncation`` and ``padding``
(batch-time options of the library, not part of the tokenization).

The regular expressions. ``Split`` patterns are Oniguruma expressions, and Python's ``re`` has no
``\\p{..}``. :func:`translate_regex` rewrites them the way
:data:`~scratchlm.data.tokenizers.GPT2_SPLIT_PATTERN` is written: ``\\p{L}`` (a letter) becomes
``[^\\W\\d_]``, ``\\p{N}`` (a number) ``\\d``, their negations ``[\\W\\d_]`` and ``\\D``; inside a
character class, ``[X\\p{L}]`` becomes ``(?:[X]|[^\\W\\d_])`` and ``[^X\\p{L}]`` becomes
``(?:[^X\\w]|(?![X])[\\d_])`` ("neither in X nor a letter", with a lookahead for the two kinds of
``\\w`` that are not letters). Capturing groups become non-capturing; ``(?i:...)``, lookarounds,
the usual quantifiers, escapes and ranges pass through. Llama 3's
``(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+``
and Qwen2's (``\\p{N}`` one digit at a time) translate this way. A construct with no faithful
translation is refused, naming it: ``\\w``/``\\b`` (Oniguruma's word characters include marks),
other Unicode properties (``\\p{Lu}``, ``\\p{M}``, scripts), nested classes and ``&&``,
possessive quantifiers, atomic and named groups, backreferences, anchors, inline flags other than
``(?i:...)``, and patterns that can match the empty string (Oniguruma and ``re`` resume
differently after an empty match). The translation is exact for ASCII, Latin, Greek, Cyrillic,
CJK, Arabic, emoji and every other letter (``L*``), decimal digit (``Nd``), mark, punctuation and
symbol, but not for the characters where GPT-2's pattern differs too (see
:mod:`scratchlm.data.gpt2_tokenizer`):

* **non-decimal numbers** (``Nl``, ``No``: ``²``, ``½``, ``Ⅻ``, ``①``, ...), letters here and
  numbers in Oniguruma: ``"x²"`` is one piece here and two there. The ``Digits``
  pre-tokenizer (Rust's ``char::is_numeric``, all of ``N*``) likewise sees only ``Nd`` here;
* **U+001C..U+001F**, whitespace for ``re``'s ``\\s`` and not for Oniguruma's;
* **code points unassigned in this Python's Unicode database** but assigned in Oniguruma's
  newer tables (they count as "other" here). The NFC normalizer, too, uses this Python's
  Unicode version (``unicodedata``), ``tokenizers`` its own.

Only the splitting differs for those characters, never the bytes: every string still
round-trips exactly, and ids differ from ``tokenizers``' only for text containing them (an
exhaustive check of every code point against ``tokenizers``' ``Split`` with GPT-2's, Llama 3's
and Qwen2's patterns found no other difference). Added tokens' ``single_word`` test (is the
neighbour a word character?) and ``lstrip``/``rstrip`` (whitespace) use Rust's ``\\w`` and
``\\s`` as ``tokenizers`` does, written out from Unicode categories and ``White_Space``: they
agree with it on every code point this Python's Unicode database assigns.

Two more differences, both on purpose: text needing a byte the vocabulary lacks (and no
``unk_token``) is a ``ValueError`` where ``tokenizers`` silently drops the character, and
``encode`` refuses lone surrogates (no UTF-8 form).

References:
    Hugging Face ``tokenizers`` (https://github.com/huggingface/tokenizers): ``AddedVocabulary``,
    the ``ByteLevel``, ``Split`` and ``Digits`` pre-tokenizers, ``BPE``, ``TemplateProcessing``.
    A. Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019.
    K. Kosaka, Oniguruma regular expressions (``doc/RE``).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import namedtuple

import numpy as np

from .._files import loads_json, read_bytes, regular_file
from ..io import atomic_write
from .gpt2_tokenizer import (_BYTE_TO_CHAR, _bpe_merge, _check_merges, _check_path, _check_vocab,
                             _merge_map, _missing_byte, _token_bytes)
from .tokenizers import (GPT2_SPLIT_PATTERN, MAX_TOKENIZER_BYTES, Tokenizer, _check_bool,
                         _check_text, _excerpt, _field, _PieceEncoder, _utf8)

__all__ = ["HFTokenizer", "translate_regex"]

_FILE = "tokenizer.json"


# ------------------------------------------------------------------------------------------------
# Oniguruma -> Python re
# ------------------------------------------------------------------------------------------------
#: ``\p{L}`` outside a class; ``\P{L}`` is the class body ``\W\d_`` (not a letter)
_LETTER = r"[^\W\d_]"
_NOT_LETTER_BODY = r"\W\d_"
_PROPERTIES = {"l": "L", "letter": "L", "n": "N", "number": "N"}
_CONTROL = {"t": "\t", "n": "\n", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "e": "\x1b"}
_WHY = {
    "w": "Oniguruma's word characters (letters, marks, decimal digits, connector punctuation) "
         "differ from re's",
    "b": "a word boundary, defined by Oniguruma's \\w, which differs from re's",
    "h": "Oniguruma's hexadecimal-digit class",
}
_WHY["W"], _WHY["B"], _WHY["H"] = _WHY["w"], _WHY["b"], _WHY["h"]
_INTERVAL = re.compile(r"\{(\d*)(,?)(\d*)\}")
_HEX = re.compile(r"\{([0-9A-Fa-f]{1,8})\}|[0-9A-Fa-f]{1,2}")
_U4 = re.compile(r"[0-9A-Fa-f]{4}")
_PROP = re.compile(r"\{(\^?)([A-Za-z_ -]{1,40})\}")


_SHOWN = {"\t": r"\t", "\n": r"\n", "\r": r"\r", "\f": r"\f", "\v": r"\v"}


def _lit(c: str) -> str:
    """One literal character in Python regex syntax, valid in and outside a class: escaped when
    special, written as an escape when not printable."""
    if c in _SHOWN:
        return _SHOWN[c]
    if not c.isprintable() and c != " ":
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else (
            f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return re.escape(c)


class _Refused(ValueError):
    pass


def _refuse(pattern: str, i: int, what: str) -> _Refused:
    return _Refused(f"the regular expression {_excerpt(pattern, 100)} uses {what} at index {i}, "
                    f"which is not translated to Python's re (see scratchlm.data.hf_tokenizer)")


def _escape_at(p: str, i: int, in_class: bool):
    """The escape at ``p[i] == '\\\\'``: ``(kind, value, end)`` with kind ``"char"`` (value: one
    character), ``"set"`` (value: the body of a Python character class) or ``"L"``."""
    if i + 1 >= len(p):
        raise _refuse(p, i, "a trailing backslash")
    c = p[i + 1]
    if c in "pP":
        m = _PROP.match(p, i + 2)
        if m is None:
            raise _refuse(p, i, f"\\{c} without a {{name}}")
        key = _PROPERTIES.get(re.sub(r"[ _-]", "", m.group(2)).lower())
        if key is None:
            raise _refuse(p, i, f"the Unicode property {p[i:m.end()]} (only \\p{{L}} and \\p{{N}} "
                                f"and their negations are translated)")
        negated = (c == "P") != bool(m.group(1))
        if key == "L":
            return ("set", _NOT_LETTER_BODY, m.end()) if negated else ("L", None, m.end())
        return "set", r"\D" if negated else r"\d", m.end()
    if c in "sSdD":
        return "set", "\\" + c, i + 2
    if c in _CONTROL:
        return "char", _CONTROL[c], i + 2
    if c == "b" and in_class:
        return "char", "\b", i + 2
    if c == "x":
        m = _HEX.match(p, i + 2)
        if m is None:
            raise _refuse(p, i, "\\x without hexadecimal digits")
        cp = int(m.group(1) or m.group(0), 16)
        if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
            raise _refuse(p, i, f"the code point {p[i:m.end()]}, which is not a character")
        return "char", chr(cp), m.end()
    if c == "u":
        m = _U4.match(p, i + 2)
        if m is None:
            raise _refuse(p, i, "\\u without four hexadecimal digits")
        cp = int(m.group(0), 16)
        if 0xD800 <= cp <= 0xDFFF:
            raise _refuse(p, i, f"the surrogate {p[i:m.end()]}")
        return "char", chr(cp), m.end()
    if c.isascii() and c.isalnum():
        why = _WHY.get(c)
        raise _refuse(p, i, f"the escape \\{c}" + (f" ({why})" if why else ""))
    return "char", c, i + 2                            # an escaped symbol stands for itself


def _class_at(p: str, i: int):
    """The character class starting at ``p[i] == '['``: ``(python regex, end)``."""
    start, n = i, len(p)
    i += 1
    negated = p.startswith("^", i)
    i += negated
    if p.startswith("]", i):
        raise _refuse(p, i, "']' first in a character class (Oniguruma reads it differently "
                            "by syntax)")
    body, letter = [], False
    while True:
        if i >= n:
            raise _refuse(p, start, "an unterminated character class '['")
        c = p[i]
        if c == "]":
            i += 1
            break
        if c == "[":
            raise _refuse(p, i, "a nested character class or POSIX bracket '[' inside '[...]'")
        if p.startswith("&&", i):
            raise _refuse(p, i, "a class intersection '&&'")
        if c == "\\":
            kind, value, i = _escape_at(p, i, True)
        else:
            kind, value, i = "char", c, i + 1
        if kind == "char" and p.startswith("-", i) and i + 1 < n and p[i + 1] != "]":
            j = i + 1
            if p[j] == "[":
                raise _refuse(p, j, "a nested character class '[' as a range end")
            if p[j] == "\\":
                kind2, value2, j = _escape_at(p, j, True)
            else:
                kind2, value2, j = "char", p[j], j + 1
            if kind2 != "char":
                raise _refuse(p, i, "a range whose end is a class")
            if ord(value2) < ord(value):
                raise _refuse(p, i - 1, f"the empty range {value!r}-{value2!r}")
            body.append(_lit(value) + "-" + _lit(value2))
            i = j
        elif kind == "char":
            body.append(_lit(value))
        elif kind == "set":
            body.append(value)
        else:
            letter = True
    x = "".join(body)
    if not letter:
        if not x:
            raise _refuse(p, start, "an empty character class")
        return ("[^" if negated else "[") + x + "]", i
    if negated:     # neither in X nor a letter: a non-word character not in X, or a digit or _
        return ("(?:[^" + x + r"\w]|(?![" + x + r"])[\d_])" if x else "[" + _NOT_LETTER_BODY + "]",
                i)
    return ("(?:[" + x + "]|" + _LETTER + ")" if x else _LETTER), i


def translate_regex(pattern: str) -> str:
    """The Python ``re`` pattern for an Oniguruma ``pattern`` of a ``tokenizer.json`` ``Split``.

    ``\\p{L}`` becomes ``[^\\W\\d_]`` and ``\\p{N}`` ``\\d``, also inside character classes;
    groups become non-capturing. The module docstring lists what is translated, what is
    refused (a ``ValueError`` naming the construct and its index) and the few characters on
    which the translation splits differently from Oniguruma.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    p, n, i = pattern, len(pattern), 0
    out = []
    prev_quantifier = False
    while i < n:
        c = p[i]
        quantifier = False
        if c == "\\":
            kind, value, i = _escape_at(p, i, False)
            if kind == "L":
                out.append(_LETTER)
            elif kind == "set":
                out.append(value if len(value) == 2 else "[" + value + "]")
            else:
                out.append(_lit(value))
        elif c == "[":
            text, i = _class_at(p, i)
            out.append(text)
        elif c == "(":
            if p.startswith("(?", i):
                for head in ("(?:", "(?=", "(?!", "(?<=", "(?<!", "(?i:"):
                    if p.startswith(head, i):
                        out.append(head)
                        i += len(head)
                        break
                else:
                    m = re.match(r"\(\?[^:)]{0,12}[:)]?", p[i:i + 16])
                    raise _refuse(p, i, f"the group {m.group(0) if m else '(?'}... (only (?:...), "
                                        f"(?i:...) and lookarounds are translated)")
            else:
                out.append("(?:")
                i += 1
        elif c in ")|":
            out.append(c)
            i += 1
        elif c in "*+?":
            if prev_quantifier and c == "+":
                raise _refuse(p, i, "a possessive quantifier")
            out.append(c)
            i += 1
            quantifier = not (prev_quantifier and c == "?")       # x*? is lazy, not a repeat
        elif c == "{":
            m = _INTERVAL.match(p, i)
            if m and (m.group(1) or m.group(3)) and (m.group(2) or not m.group(3)):
                out.append(m.group(0))
                i = m.end()
                quantifier = True
                if p.startswith("+", i):
                    raise _refuse(p, i, "'+' after an interval (a possessive or nested repeat, "
                                        "read differently by Oniguruma's syntaxes)")
            else:
                out.append(r"\{")
                i += 1
        elif c in "^$":
            raise _refuse(p, i, f"the anchor {c!r}")
        elif c == ".":
            out.append(".")
            i += 1
        else:
            out.append(_lit(c))
            i += 1
        prev_quantifier = quantifier
    return "".join(out)


def _compile_split(pattern: str, where: str, field: str, literal: bool = False):
    """``pattern`` (Oniguruma; a plain string when ``literal``) translated and compiled; refused
    with ``where`` and ``field`` named when it cannot be translated, does not compile, or can
    match the empty string."""
    try:
        python = re.escape(pattern) if literal else translate_regex(pattern)
    except _Refused as exc:
        raise ValueError(f"{where}: {field}: {exc}") from None
    try:
        compiled = re.compile(python)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise ValueError(f"{where}: {field}: the regular expression {_excerpt(pattern, 100)} "
                         f"does not compile once translated to Python's re ({exc})") from None
    if compiled.match("") is not None:
        raise ValueError(f"{where}: {field}: the regular expression {_excerpt(pattern, 100)} can "
                         f"match the empty string; Oniguruma and Python's re resume differently "
                         f"after an empty match, so such patterns are refused")
    return compiled


# ------------------------------------------------------------------------------------------------
# reading tokenizer.json
# ------------------------------------------------------------------------------------------------
_Added = namedtuple("_Added", "id content special single_word lstrip rstrip normalized")


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(value),
                                                                        type(value).__name__)


def _obj(value, where, field) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {field} must be a JSON object, got {_kind(value)}")
    return value


def _type_of(d: dict, where, field) -> str:
    t = d.get("type")
    if not isinstance(t, str):
        raise ValueError(f"{where}: {field}.type must be a string, got {_excerpt(t)}")
    return t


def _flag(d: dict, key, default: bool, where, field) -> bool:
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {field}.{key} must be true or false, got {_excerpt(value)}")
    return value


def _model(m, where) -> dict:
    m = _obj(m, where, "model")
    kind = m.get("type", "BPE" if "merges" in m and "vocab" in m else None)
    if kind != "BPE":
        raise ValueError(f"{where}: model.type is {_excerpt(kind)}; only byte-level BPE ('BPE') is "
                         f"supported (SentencePiece/Unigram, WordPiece and WordLevel tokenizers "
                         f"are not)")
    if _flag(m, "byte_fallback", False, where, "model"):
        raise ValueError(f"{where}: model.byte_fallback is true: a SentencePiece-style BPE "
                         f"(unknown characters as <0x..> byte tokens), not byte-level BPE; not "
                         f"supported")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if m.get(key) not in (None, ""):
            raise ValueError(f"{where}: model.{key} is {_excerpt(m[key])}; byte-level BPE has "
                             f"none, and this reader supports only null")
    dropout = m.get("dropout")
    if dropout not in (None, 0, 0.0) or isinstance(dropout, bool):
        raise ValueError(f"{where}: model.dropout is {_excerpt(dropout)}; BPE dropout (random "
                         f"segmentation) is not supported, only null")
    if "vocab" not in m or "merges" not in m:
        raise ValueError(f"{where}: model must have 'vocab' and 'merges'")
    vocab = _check_vocab(m["vocab"], f"{where}: model.vocab")
    merges = m["merges"]
    if not isinstance(merges, list):
        raise ValueError(f"{where}: model.merges must be a JSON array, got {_kind(merges)}")
    merges = _check_merges(merges, vocab, f"{where}: model.merges")
    unk = m.get("unk_token")
    if unk is not None and (not isinstance(unk, str) or unk not in vocab):
        raise ValueError(f"{where}: model.unk_token {_excerpt(unk)} must be null or a token of "
                         f"model.vocab")
    return {"vocab": vocab, "merges": merges, "unk_token": unk,
            "fuse_unk": _flag(m, "fuse_unk", False, where, "model"),
            "ignore_merges": _flag(m, "ignore_merges", False, where, "model")}


def _normalizer(d, where, field="normalizer") -> bool:
    """Whether the normalizer is NFC (``False``: none)."""
    if d is None:
        return False
    d = _obj(d, where, field)
    kind = _type_of(d, where, field)
    if kind == "NFC":
        return True
    if kind == "Sequence":
        parts = d.get("normalizers")
        if not isinstance(parts, list):
            raise ValueError(f"{where}: {field}.normalizers must be a JSON array")
        return any([_normalizer(x, where, f"{field}.normalizers[{k}]")       # all checked
                    for k, x in enumerate(parts)])
    raise ValueError(f"{where}: {field}.type {kind!r} is not supported (byte-level BPE here "
                     f"takes no normalizer or NFC)")


def _normalize(content: str, nfc: bool) -> str:
    return unicodedata.normalize("NFC", content) if nfc else content


def _added_tokens(tokens, vocab: dict, where) -> tuple:
    """The added tokens with the ids ``tokenizers`` gives them, and the full vocabulary size."""
    if tokens is None:
        tokens = []
    if not isinstance(tokens, list):
        raise ValueError(f"{where}: added_tokens must be a JSON array, got {_kind(tokens)}")
    out, seen, next_id = [], {}, len(vocab)
    for k, t in enumerate(tokens):
        field = f"added_tokens[{k}]"
        t = _obj(t, where, field)
        content = t.get("content")
        if not isinstance(content, str) or not content:
            raise ValueError(f"{where}: {field}.content must be a non-empty string, got "
                             f"{_excerpt(content)}")
        _utf8(content, f"{where}: {field}.content")
        if content in seen:
            raise ValueError(f"{where}: {field}.content {_excerpt(content)} is already "
                             f"added_tokens[{seen[content]}]")
        seen[content] = k
        special = _flag(t, "special", False, where, field)
        if content in vocab:
            expect = vocab[content]
        else:
            expect, next_id = next_id, next_id + 1
        i = t.get("id")
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{where}: {field}.id must be an integer, got {_excerpt(i)}")
        if i != expect:
            raise ValueError(f"{where}: {field} {_excerpt(content)} has id {i}, but tokenizers "
                             f"gives it {expect} (the vocabulary's id for that text, else the "
                             f"next id after model.vocab in file order)")
        out.append(_Added(i, content, special, _flag(t, "single_word", False, where, field),
                          _flag(t, "lstrip", False, where, field),
                          _flag(t, "rstrip", False, where, field),
                          _flag(t, "normalized", not special, where, field)))
    return out, next_id


def _pre_tokenizer(d, where, field="pre_tokenizer") -> tuple:
    """The steps, ``("split", compiled)`` and, last, ``("bytelevel", add_prefix_space,
    use_regex)``, and the pre-tokenizer's JSON in one form (every field written out)."""
    if d is None:
        raise ValueError(f"{where}: {field} is null; byte-level BPE needs a ByteLevel "
                         f"pre-tokenizer")
    steps, canonical = [], []

    def walk(d, field):
        d = _obj(d, where, field)
        kind = _type_of(d, where, field)
        if kind == "Sequence":
            parts = d.get("pretokenizers")
            if not isinstance(parts, list):
                raise ValueError(f"{where}: {field}.pretokenizers must be a JSON array")
            for k, x in enumerate(parts):
                walk(x, f"{field}.pretokenizers[{k}]")
        elif steps and steps[-1][0] == "bytelevel":
            raise ValueError(f"{where}: {field} ({kind}) comes after ByteLevel; ByteLevel must be "
                             f"the last pre-tokenizer")
        elif kind == "ByteLevel":
            prefix_space = _flag(d, "add_prefix_space", True, where, field)
            use_regex = _flag(d, "use_regex", True, where, field)
            steps.append(("bytelevel", prefix_space, use_regex))
            canonical.append({"type": "ByteLevel", "add_prefix_space": prefix_space,
                              "trim_offsets": _flag(d, "trim_offsets", True, where, field),
                              "use_regex": use_regex})
        elif kind == "Split":
            behavior = d.get("behavior")
            if behavior != "Isolated":
                raise ValueError(f"{where}: {field}.behavior is {_excerpt(behavior)}; only "
                                 f"'Isolated' is supported")
            if _flag(d, "invert", False, where, field):
                raise ValueError(f"{where}: {field}.invert is true; only false is supported")
            pattern = d.get("pattern")
            if not (isinstance(pattern, dict) and len(pattern) == 1
                    and isinstance(next(iter(pattern.values())), str)
                    and next(iter(pattern)) in ("Regex", "String")):
                raise ValueError(f"{where}: {field}.pattern must be {{\"Regex\": str}} or "
                                 f"{{\"String\": str}}, got {_excerpt(pattern)}")
            (how, text), = pattern.items()
            steps.append(("split", _compile_split(text, where, f"{field}.pattern.{how}",
                                                  literal=how == "String")))
            canonical.append({"type": "Split", "pattern": {how: text}, "behavior": "Isolated",
                              "invert": False})
        elif kind == "Digits":
            individual = _flag(d, "individual_digits", False, where, field)
            steps.append(("split", re.compile(r"\d" if individual else r"\d+")))
            canonical.append({"type": "Digits", "individual_digits": individual})
        else:
            raise ValueError(f"{where}: {field}.type {kind!r} is not supported (byte-level BPE "
                             f"needs ByteLevel, after Split or Digits steps in a Sequence)")

    walk(d, field)
    if not steps or steps[-1][0] != "bytelevel":
        raise ValueError(f"{where}: {field} has no ByteLevel step; byte-level BPE needs one, "
                         f"last")
    if len(canonical) > 1:
        return steps, {"type": "Sequence", "pretokenizers": canonical}
    return steps, canonical[0]


def _post_processor(d, vocab_size: int, where, field="post_processor") -> tuple:
    """``(prefix ids, suffix ids)`` that the post-processor puts around a single sequence."""
    if d is None:
        return [], []
    d = _obj(d, where, field)
    kind = _type_of(d, where, field)

    def check_id(i, f):
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise ValueError(f"{where}: {f} must be a token id in [0, {vocab_size}), got "
                             f"{_excerpt(i)}")
        return i

    if kind == "ByteLevel":
        return [], []
    if kind == "Sequence":
        parts = d.get("processors")
        if not isinstance(parts, list):
            raise ValueError(f"{where}: {field}.processors must be a JSON array")
        prefix, suffix = [], []
        for k, x in enumerate(parts):
            pre, post = _post_processor(x, vocab_size, where,
                                        f"{field}.processors[{k}]")
            prefix, suffix = pre + prefix, suffix + post
        return prefix, suffix
    if kind in ("RobertaProcessing", "BertProcessing"):
        ends = []
        for key in ("cls", "sep"):
            v = d.get(key)
            if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)):
                raise ValueError(f"{where}: {field}.{key} must be [token, id], got {_excerpt(v)}")
            ends.append(check_id(v[1], f"{field}.{key}[1]"))
        return [ends[0]], [ends[1]]
    if kind == "TemplateProcessing":
        single = d.get("single")
        table = _obj(d.get("special_tokens", {}), where, f"{field}.special_tokens")
        if not isinstance(single, list):
            raise ValueError(f"{where}: {field}.single must be a JSON array, got {_kind(single)}")
        prefix, suffix, seen_a = [], [], False
        for k, piece in enumerate(single):
            f = f"{field}.single[{k}]"
            if not (isinstance(piece, dict) and len(piece) == 1):
                raise ValueError(f"{where}: {f} must be {{\"Sequence\": ...}} or "
                                 f"{{\"SpecialToken\": ...}}, got {_excerpt(piece)}")
            (what, body), = piece.items()
            body = _obj(body, where, f"{f}.{what}")
            if what == "Sequence":
                if body.get("id") != "A" or seen_a:
                    raise ValueError(f"{where}: {f}: a single-sequence template must hold the "
                                     f"sequence A once, got {_excerpt(body.get('id'))}")
                seen_a = True
            elif what == "SpecialToken":
                name = body.get("id")
                entry = table.get(name) if isinstance(name, str) else None
                if not isinstance(entry, dict) or not isinstance(entry.get("ids"), list):
                    raise ValueError(f"{where}: {f} names the special token {_excerpt(name)}, "
                                     f"which {field}.special_tokens does not define with ids")
                ids = [check_id(i, f"{field}.special_tokens[{name!r}].ids")
                       for i in entry["ids"]]
                (suffix if seen_a else prefix).extend(ids)
            else:
                raise ValueError(f"{where}: {f} must be a Sequence or a SpecialToken, got "
                                 f"{_excerpt(what)}")
        if not seen_a:
            raise ValueError(f"{where}: {field}.single has no {{\"Sequence\": {{\"id\": \"A\"}}}}")
        return prefix, suffix
    raise ValueError(f"{where}: {field}.type {kind!r} is not supported (TemplateProcessing, "
                     f"RobertaProcessing, BertProcessing, ByteLevel or a Sequence of them)")


def _decoder(d, where):
    if d is None:
        raise ValueError(f"{where}: decoder is null; byte-level BPE needs the ByteLevel decoder")
    kind = _type_of(_obj(d, where, "decoder"), where, "decoder")
    if kind != "ByteLevel":
        raise ValueError(f"{where}: decoder.type {kind!r} is not supported (byte-level BPE "
                         f"decodes with ByteLevel)")


# ------------------------------------------------------------------------------------------------
# the tokenizer
# ------------------------------------------------------------------------------------------------
class HFTokenizer(_PieceEncoder, Tokenizer):
    """Byte-level BPE from a Hugging Face ``tokenizer.json`` (GPT-2, Llama 3, Qwen2, SmolLM).

    ``HFTokenizer.from_pretrained(path)`` reads ``path/tokenizer.json`` (or ``path`` itself when
    it names the file); :meth:`from_tokenizer_json` takes the parsed JSON object. The module
    docstring describes the pipeline, what is refused, and the few characters (``²``, ``½``,
    U+001C..U+001F, ...) on which Python's ``re`` splits differently from Oniguruma.

    ``encode(text, allowed_special=False, add_special_tokens=False)``: special added tokens are
    matched only with ``allowed_special=True`` (non-special added tokens always are), and the
    post-processor's ids (Llama 3's ``<|begin_of_text|>``) are added only with
    ``add_special_tokens=True``; both ``True`` give ``tokenizers``' default
    ``Tokenizer.encode(text).ids``. ``decode(ids, skip_special_tokens=False)`` as ``tokenizers``.

    ``to_dict`` embeds the whole ``tokenizer.json`` (checked and normalised), so a checkpoint can
    carry the tokenizer and :func:`~scratchlm.data.tokenizers.load_tokenizer` rebuilds it;
    :meth:`save_pretrained` writes it back as a ``tokenizer.json`` that ``tokenizers`` loads.
    """

    type_name = "hf"

    def __init__(self, path):
        path = _check_path(path, "path")
        file = os.path.join(path, _FILE) if os.path.isdir(path) else path
        try:
            regular_file(file, _FILE)
        except FileNotFoundError:
            where = (f"path {path!r} has no {_FILE}" if file != path
                     else f"no such file {path!r} (give a {_FILE} or the folder holding it)")
            raise FileNotFoundError(where) from None
        raw = read_bytes(file, _FILE, limit=MAX_TOKENIZER_BYTES)
        where = f"{_FILE} {file}"
        self._setup(loads_json(raw, where), where)

    @classmethod
    def from_pretrained(cls, path) -> "HFTokenizer":
        """Load ``path/tokenizer.json`` from a local folder, or ``path`` when it is the file
        (nothing is downloaded)."""
        return cls(path)

    @classmethod
    def from_tokenizer_json(cls, d: dict) -> "HFTokenizer":
        """Build from the parsed JSON object of a ``tokenizer.json``."""
        if not isinstance(d, dict):
            raise TypeError(f"d must be a dict (a parsed tokenizer.json), got {type(d).__name__}")
        obj = cls.__new__(cls)
        obj._setup(d, _FILE)
        return obj

    def _setup(self, d: dict, where: str) -> None:
        version = d.get("version", "1.0")
        if version != "1.0":
            raise ValueError(f"{where}: version is {_excerpt(version)}; tokenizers writes and "
                             f"reads '1.0'")
        model = _model(d.get("model"), where)
        nfc = _normalizer(d.get("normalizer"), where)
        added, vocab_size = _added_tokens(d.get("added_tokens"), model["vocab"], where)
        steps, self._pre_json = _pre_tokenizer(d.get("pre_tokenizer"), where)
        specials = {t.content: t.id for t in added if t.special}
        prefix, suffix = _post_processor(d.get("post_processor"), vocab_size, where)
        _decoder(d.get("decoder"), where)

        vocab = model["vocab"]
        self._vocab = vocab
        self._merges = model["merges"]
        self._merge_map = _merge_map(vocab, self._merges)
        self._byte_ids = [vocab.get(_BYTE_TO_CHAR[b], -1) for b in range(256)]
        self._unk_token = model["unk_token"]
        self._unk = vocab[self._unk_token] if self._unk_token is not None else None
        self._fuse_unk = model["fuse_unk"]
        self._ignore_merges = model["ignore_merges"]
        self._nfc = nfc
        self._steps = steps
        self._gpt2_split = re.compile(GPT2_SPLIT_PATTERN)
        self._prefix, self._suffix = prefix, suffix
        self._added = added
        self._specials = specials
        self._added_by_text = {}
        raw, normed = [], []
        for t in added:
            text = _normalize(t.content, nfc) if t.normalized else t.content
            if (t.normalized, text) in self._added_by_text:
                raise ValueError(f"{where}: the added tokens {_excerpt(t.content)} and "
                                 f"{_excerpt(self._added_by_text[(t.normalized, text)].content)} "
                                 f"are the same text once normalized")
            self._added_by_text[(t.normalized, text)] = t
            (normed if t.normalized else raw).append(text)
        self._raw_matcher = self._matcher(raw)
        self._normed_matcher = self._matcher(normed)
        # decoding: every id's token string (an added token's normalized form when it is
        # matched normalized, as tokenizers decodes it), its bytes, and whether it is special
        tokens = [""] * vocab_size
        for tok, i in vocab.items():
            tokens[i] = tok
        for t in added:
            tokens[t.id] = _normalize(t.content, nfc) if t.normalized else t.content
        self._id_to_token = tokens
        self._id_bytes = [_token_bytes(tok) for tok in tokens]
        self._skip = [tok in specials for tok in tokens]
        self._json = self._canonical(d)
        self._cache: dict = {}

    @staticmethod
    def _matcher(texts):
        if not texts:
            return None
        return re.compile("|".join(re.escape(s) for s in sorted(texts, key=len, reverse=True)))

    def _canonical(self, d: dict) -> dict:
        """The ``tokenizer.json`` this tokenizer is, in one form: every field written out, vocab in
        id order, merges as pairs, NFC for any sequence of NFCs; the post-processor as read
        (checked)."""
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": t.id, "content": t.content, "single_word": t.single_word,
                              "lstrip": t.lstrip, "rstrip": t.rstrip,
                              "normalized": t.normalized, "special": t.special}
                             for t in self._added],
            "normalizer": {"type": "NFC"} if self._nfc else None,
            "pre_tokenizer": self._pre_json, "post_processor": d.get("post_processor"),
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None,
                      "unk_token": self._unk_token,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": self._fuse_unk, "byte_fallback": False,
                      "ignore_merges": self._ignore_merges,
                      "vocab": dict(sorted(self._vocab.items(), key=lambda kv: kv[1])),
                      "merges": [[a, b] for a, b in self._merges]},
        }

    # -- views -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    @property
    def special_tokens(self) -> dict:
        """The added tokens marked ``special``: text -> id."""
        return dict(self._specials)

    @property
    def added_tokens(self) -> dict:
        """Every added token (special or not): text -> id."""
        return {t.content: t.id for t in self._added}

    @property
    def vocab(self) -> dict:
        """Token string (byte-level alphabet; added tokens as written) -> id, a fresh dict."""
        out = dict(self._vocab)
        out.update(self.added_tokens)
        return out

    @property
    def merges(self) -> list:
        """The merges in rank order, as ``(a, b)`` token-string pairs."""
        return list(self._merges)

    def id_to_token(self, i: int) -> str:
        """The token string of id ``i`` (byte-level alphabet, e.g. ``"Ġthe"``)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"i must be an int, got {type(i).__name__}")
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"i must be in [0, {self.vocab_size}), got {i}")
        return self._id_to_token[i]

    def to_tokenizer_json(self) -> dict:
        """The ``tokenizer.json`` object (a fresh copy) that ``tokenizers`` and this class load."""
        return json.loads(json.dumps(self._json))

    def save_pretrained(self, path) -> str:
        """Write ``path/tokenizer.json`` atomically (the folder is created if needed); returns
        the file's path."""
        path = _check_path(path, "path")
        file = os.path.join(path, _FILE)
        data = json.dumps(self._json, ensure_ascii=False).encode("utf-8")
        atomic_write(file, lambda f: f.write(data))
        return file

    # -- encoding ----------------------------------------------------------------------------
    def _split_added(self, text: str, normalized: bool, allowed_special: bool, out: list,
                     then) -> None:
        """``tokenizers``' ``AddedVocabulary::find_matches``: the added tokens (those matched in
        normalized text, or in raw text) found in ``text`` go to ``out`` as ids, and ``then(part,
        out)`` handles the text between them. Matches are leftmost, longest first, and do not
        overlap; a special token that is not allowed, or a ``single_word`` token inside a word,
        is skipped, but its span is not searched again (as the library's matcher does)."""
        matcher = self._normed_matcher if normalized else self._raw_matcher
        if matcher is None:
            then(text, out)
            return
        table = self._added_by_text
        start_offset = 0
        for m in matcher.finditer(text):
            t = table[(normalized, m.group())]
            start, stop = m.span()
            if t.special and not allowed_special:
                continue
            if t.single_word and ((start > 0 and _is_word(text[start - 1]))
                                  or (stop < len(text) and _is_word(text[stop]))):
                continue
            if t.lstrip:
                while start > 0 and text[start - 1] in _WHITE_SPACE:
                    start -= 1
                start = max(start, start_offset)
            if t.rstrip:
                while stop < len(text) and text[stop] in _WHITE_SPACE:
                    stop += 1
            if start_offset < start:
                then(text[start_offset:start], out)
            out.append(t.id)
            start_offset = stop
        if start_offset < len(text):
            then(text[start_offset:], out)

    def _pre_tokenize(self, text: str, out: list) -> None:
        """The pre-tokenizer's steps on one piece of normalized text, then BPE on each
        pre-token."""
        pieces = [text]
        for step in self._steps:
            new = []
            if step[0] == "split":
                rx = step[1]
                for piece in pieces:
                    end = 0
                    for m in rx.finditer(piece):
                        s, e = m.span()
                        if s == e:
                            raise ValueError(f"the pre-tokenizer pattern {_excerpt(rx.pattern)} "
                                             f"matched the empty string at index {s} of the "
                                             f"piece {_excerpt(piece)}; refusing to guess how "
                                             f"Oniguruma would continue")
                        if s > end:
                            new.append(piece[end:s])
                        new.append(piece[s:e])
                        end = e
                    if end < len(piece):
                        new.append(piece[end:])
            else:
                _, prefix_space, use_regex = step
                for piece in pieces:
                    if prefix_space and not piece.startswith(" "):
                        piece = " " + piece
                    if use_regex:
                        new.extend(self._gpt2_split.findall(piece))
                    else:
                        new.append(piece)
            pieces = new
        for piece in pieces:
            out.extend(self._encode_piece(piece))

    def _piece_ids(self, piece: str) -> list:
        """One pre-token -> its ids: its bytes in GPT-2's alphabet, merged by rank (or the whole
        pre-token, when it is in the vocabulary and ``ignore_merges`` is set)."""
        data = piece.encode("utf-8")
        if self._ignore_merges:
            whole = self._vocab.get("".join([_BYTE_TO_CHAR[b] for b in data]))
            if whole is not None:
                return [whole]
        ids = [self._byte_ids[b] for b in data]
        if -1 in ids:
            if self._unk is None:
                raise _missing_byte(data[ids.index(-1)], piece)
            fused, ids = ids, []
            for k, i in enumerate(fused):
                if i >= 0:
                    ids.append(i)
                elif not (self._fuse_unk and k > 0 and fused[k - 1] < 0):
                    ids.append(self._unk)
        return _bpe_merge(ids, self._merge_map) if len(ids) > 1 else ids

    def encode(self, text: str, *, allowed_special: bool = False,
               add_special_tokens: bool = False) -> np.ndarray:
        """Token ids of ``text`` (1-D int64).

        ``allowed_special=True`` turns the text of special added tokens into their ids (by
        default it is ordinary text; non-special added tokens always match).
        ``add_special_tokens=True`` adds the post-processor's ids (e.g. Llama 3's
        ``<|begin_of_text|>`` in front). A lone surrogate is a ``ValueError``.
        """
        _check_text(text)
        allowed = _check_bool(allowed_special, "allowed_special")
        add = _check_bool(add_special_tokens, "add_special_tokens")
        _utf8(text)
        out: list = []

        def normalized_part(part: str, out: list) -> None:
            if self._nfc and not unicodedata.is_normalized("NFC", part):
                part = unicodedata.normalize("NFC", part)
            self._split_added(part, True, allowed, out, self._pre_tokenize)

        if text:                                        # 1. added tokens in the raw text
            self._split_added(text, False, allowed, out, normalized_part)
        if add:
            out = self._prefix + out + self._suffix
        return np.array(out, dtype=np.int64)

    def _decode_ids(self, ids, skip_special_tokens):
        table = self._id_bytes
        if skip_special_tokens:
            skip = self._skip
            data = b"".join([table[i] for i in ids if not skip[i]])
        else:
            data = b"".join([table[i] for i in ids])
        return data.decode("utf-8", errors="replace")

    # -- serialisation -----------------------------------------------------------------------
    def _state(self):
        return {"tokenizer": self.to_tokenizer_json()}

    @classmethod
    def _from_state(cls, d):
        obj = cls.__new__(cls)
        obj._setup(_field(d, "tokenizer", dict, "a tokenizer.json object"),
                   "tokenizer dict field 'tokenizer'")
        return obj

    def __repr__(self):
        return (f"HFTokenizer(vocab_size={self.vocab_size}, added_tokens={len(self._added)}, "
                f"nfc={self._nfc}, ignore_merges={self._ignore_merges})")


#: Unicode's White_Space, what Rust's \s (the ``regex`` crate's, used for ``lstrip``/``rstrip``)
#: matches; ``str.isspace`` adds U+001C..U+001F
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                         + "".join(map(chr, range(0x2000, 0x200B))))
#: symbols that are Other_Alphabetic: circled, parenthesized, squared and negative letters
_ALPHABETIC_SYMBOLS = ((0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169),
                       (0x1F170, 0x1F189))


def _is_word(c: str) -> bool:
    r"""Rust's ``\w`` (the ``regex`` crate's, which ``single_word`` uses): Alphabetic, marks,
    decimal digits, connector punctuation, joiners; from this Python's Unicode database."""
    cat = unicodedata.category(c)
    if cat[0] in "LM" or cat in ("Nd", "Nl", "Pc") or c in "\u200c\u200d":
        return True
    return any(lo <= ord(c) <= hi for lo, hi in _ALPHABETIC_SYMBOLS)
