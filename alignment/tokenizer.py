"""Tokenizer: `tokenizer.json` (HF `tokenizers`) or sentencepiece models, plus chat templates.

Chat templates are rendered exactly the way `transformers` renders them (jinja2
`ImmutableSandboxedEnvironment` with `trim_blocks`/`lstrip_blocks`, the `raise_exception` and
`strftime_now` globals, the non-escaping `tojson` filter, the special tokens passed as variables,
`tools`/`documents` defaulting to None and extra keyword arguments such as `enable_thinking` passed
through), so a model sees the same text here as in its upstream recipe.

`tiny_tokenizer()` builds a deterministic character-level vocabulary (250 ids, fits the "tiny" model
preset's 256) with byte fallback for non-ASCII text and a small chat template, for tests and tiny runs.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import pathlib
import shutil
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
# Names a message's reasoning is passed under; transformers copies it to all of them before rendering.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


# ----------------------------------------------------------------------------------------------
# Chat templates
# ----------------------------------------------------------------------------------------------


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson HTML-escapes; chat templates expect plain JSON (as in transformers).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore attributes (no reaching into CPython internals)."""

    def __init__(*args, **kwargs):  # pylint: disable=no-method-argument
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot set underscore attributes on a namespace, got {name!r}")


class _GenerationBlock(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (used by some HF templates) and renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


@functools.lru_cache(maxsize=32)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compiles a chat template in the same sandboxed environment transformers uses."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template)


def _plain(value: Any) -> Any:
    """A copy of `value` built from plain JSON types only (the template must not see rich objects)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]], *,
                         add_generation_prompt: bool = False,
                         special_tokens: Mapping[str, Any] | None = None, **kwargs) -> str:
    """Renders one conversation; `kwargs` (e.g. `enable_thinking=False`, `tools=[...]`) reach the template."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"apply_chat_template: messages must be a non-empty list of dicts, got {messages!r}")
    chat = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"apply_chat_template: message {i} must be a dict, got {type(message).__name__}")
        # Like transformers: keys whose value is None are dropped (APIs send content=None), and the
        # reasoning is visible under each of its common names.
        message = {k: v for k, v in _plain(message).items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        chat.append(message)
    variables = {**dict(special_tokens or {}), **_plain(kwargs)}
    variables.setdefault("tools", None)
    variables.setdefault("documents", None)
    return compile_chat_template(template).render(
        messages=chat, add_generation_prompt=add_generation_prompt, **variables)


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as strings or as serialised AddedToken dicts."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value["content"]
    if isinstance(value, str):
        return value
    raise TypeError(f"tokenizer_config.json: expected a token string or AddedToken dict, got {value!r}")


def _clean_up_tokenization(text: str) -> str:
    # Same replacements as transformers' clean_up_tokenization (only used when the config asks for it).
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class Tokenizer:
    """Text <-> token ids for one model, with its chat template and special-token ids.

    Backed either by a HF `tokenizers.Tokenizer` (tokenizer.json) or a sentencepiece model
    (tokenizer.model). Ids equal those of `transformers.AutoTokenizer` on the same folder.
    """

    def __init__(self, backend, *, config: Mapping[str, Any] | None = None,
                 chat_template: str | None = None, sp_model_proto: bytes | None = None):
        config = dict(config or {})
        self._backend = backend
        self._is_sp = sp_model_proto is not None
        self._sp_proto = sp_model_proto
        self.config = config
        self.chat_template = chat_template
        if self._is_sp:
            defaults = {
                "bos_token": backend.id_to_piece(backend.bos_id()) if backend.bos_id() >= 0 else None,
                "eos_token": backend.id_to_piece(backend.eos_id()) if backend.eos_id() >= 0 else None,
                "unk_token": backend.id_to_piece(backend.unk_id()) if backend.unk_id() >= 0 else None,
                "pad_token": backend.id_to_piece(backend.pad_id()) if backend.pad_id() >= 0 else None,
            }
        else:
            defaults = dict.fromkeys(SPECIAL_TOKEN_NAMES)
        self.special_tokens = {}
        for name in SPECIAL_TOKEN_NAMES:
            token = _token_content(config[name]) if name in config else defaults[name]
            if token is not None and self.token_to_id(token) is None:
                raise ValueError(f"tokenizer config: {name}={token!r} is not in the vocabulary")
            self.special_tokens[name] = token
        self.additional_special_tokens = [
            _token_content(t) for t in config.get("additional_special_tokens") or []]
        # sentencepiece models (Llama/Gemma style) prepend BOS by default; tokenizer.json carries its own
        # post-processor, so only the sentencepiece path reads these flags.
        self._add_bos = bool(config.get("add_bos_token", self._is_sp))
        self._add_eos = bool(config.get("add_eos_token", False))
        self._clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        """Loads `tokenizer.json` (preferred) or `tokenizer.model` plus `tokenizer_config.json`."""
        path = pathlib.Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"Tokenizer.from_pretrained: {path} is not a directory")
        config: dict[str, Any] = {}
        config_file = path / "tokenizer_config.json"
        if config_file.exists():
            with open(config_file, encoding="utf-8") as f:
                config = json.load(f)
        special_map_file = path / "special_tokens_map.json"
        if special_map_file.exists():  # legacy file; tokenizer_config.json wins where both set a token
            with open(special_map_file, encoding="utf-8") as f:
                for key, value in json.load(f).items():
                    config.setdefault(key, value)
        chat_template = _read_chat_template(path, config)
        if (path / "tokenizer.json").exists():
            backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
            return cls(backend, config=config, chat_template=chat_template)
        if (path / "tokenizer.model").exists():
            proto = (path / "tokenizer.model").read_bytes()
            return cls(_load_sentencepiece(proto), config=config, chat_template=chat_template,
                       sp_model_proto=proto)
        raise FileNotFoundError(
            f"Tokenizer.from_pretrained: {path} has neither tokenizer.json nor tokenizer.model")

    @classmethod
    def from_sentencepiece(cls, model_file: str | os.PathLike, *,
                           config: Mapping[str, Any] | None = None,
                           chat_template: str | None = None) -> "Tokenizer":
        proto = pathlib.Path(model_file).read_bytes()
        return cls(_load_sentencepiece(proto), config=config, chat_template=chat_template,
                   sp_model_proto=proto)

    def save(self, path: str | os.PathLike) -> None:
        """Writes a folder `from_pretrained` (and transformers.AutoTokenizer) can load."""
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = dict(self.config)
        for name, token in self.special_tokens.items():
            config[name] = token
        if self.additional_special_tokens:
            config["additional_special_tokens"] = list(self.additional_special_tokens)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        if self._is_sp:
            (path / "tokenizer.model").write_bytes(self._sp_proto)
            config.setdefault("add_bos_token", self._add_bos)
            config.setdefault("add_eos_token", self._add_eos)
        else:
            self._backend.save(str(path / "tokenizer.json"))
            config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        with open(path / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
        if (path / "chat_template.jinja").exists():  # would shadow the template we just wrote
            os.remove(path / "chat_template.jinja")

    # -- vocabulary ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (= len(transformers tokenizer))."""
        if self._is_sp:
            return self._backend.get_piece_size()
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        if self._is_sp:
            i = self._backend.piece_to_id(token)
            # sentencepiece maps unknown pieces to unk; only report the unk id for the unk piece itself.
            return i if self._backend.id_to_piece(i) == token else None
        return self._backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        if self._is_sp:
            return self._backend.id_to_piece(int(i)) if 0 <= i < self.vocab_size else None
        return self._backend.id_to_token(int(i))

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens[name]
        return None if token is None else self.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_id(self) -> int | None:
        """The pad token's id, or the EOS id where the tokenizer defines no pad token."""
        pad = self._special_id("pad_token")
        return self.eos_id if pad is None else pad

    @property
    def unk_id(self) -> int | None:
        return self._special_id("unk_token")

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens["bos_token"]

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens["eos_token"]

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens["pad_token"]

    def special_ids(self) -> set[int]:
        """Ids decode(..., skip_special_tokens=True) removes."""
        if self._is_sp:
            ids = {i for i in range(self.vocab_size)
                   if self._backend.is_control(i) or self._backend.is_unknown(i)}
        else:
            ids = {i for i, t in self._backend.get_added_tokens_decoder().items() if t.special}
        for token in [*self.special_tokens.values(), *self.additional_special_tokens]:
            if token is not None and self.token_to_id(token) is not None:
                ids.add(self.token_to_id(token))
        return ids

    # -- text <-> ids -------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; `add_special_tokens` adds what the model's recipe adds (e.g. BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode: text must be a str, got {type(text).__name__}")
        if not self._is_sp:
            return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)
        ids = self._encode_sp_with_specials(text)
        if add_special_tokens:
            if self._add_bos and self.bos_id is not None:
                ids = [self.bos_id] + ids
            if self._add_eos and self.eos_id is not None:
                ids = ids + [self.eos_id]
        return ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        if not self._is_sp:
            return [list(e.ids) for e in
                    self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]
        return [self.encode(t, add_special_tokens) for t in texts]

    def _encode_sp_with_specials(self, text: str) -> list[int]:
        # sentencepiece treats "<s>" in text as plain characters; chat templates insert special tokens as
        # text, so split on them first (transformers does the same for its slow tokenizers).
        specials = sorted({t for t in [*self.special_tokens.values(), *self.additional_special_tokens]
                           if t}, key=len, reverse=True)
        ids: list[int] = []
        start = 0
        pieces: list[tuple[str, bool]] = []
        i = 0
        while i < len(text):
            match = next((t for t in specials if text.startswith(t, i)), None)
            if match is None:
                i += 1
                continue
            if i > start:
                pieces.append((text[start:i], False))
            pieces.append((match, True))
            i += len(match)
            start = i
        if start < len(text):
            pieces.append((text[start:], False))
        for piece, is_special in pieces:
            if is_special:
                ids.append(self.token_to_id(piece))
            else:
                ids.extend(self._backend.encode(piece))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"Tokenizer.decode: ids {bad[:5]} are outside the vocabulary "
                             f"[0, {self.vocab_size})")
        if self._is_sp:
            text = self._decode_sp(ids, skip_special_tokens)
        else:
            text = self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self._clean_up_spaces else text

    def _decode_sp(self, ids: list[int], skip_special_tokens: bool) -> str:
        specials = self.special_ids()
        out, run = [], []
        for i in ids:
            if i in specials:
                if run:
                    out.append(self._backend.decode(run))
                    run = []
                if not skip_special_tokens:
                    out.append(self._backend.id_to_piece(i))
            else:
                run.append(i)
        if run:
            out.append(self._backend.decode(run))
        return "".join(out)

    # -- chat ---------------------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *,
                            add_generation_prompt: bool = False, tokenize: bool = False,
                            chat_template: str | None = None, **kwargs) -> str | list[int]:
        """Renders `messages` ([{"role", "content"}, ...]) with the model's template.

        Returns the text, or its ids (no special tokens added beyond the template's) when `tokenize`.
        Extra keyword arguments (`enable_thinking=False`, `tools=[...]`, ...) are template variables.
        """
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("apply_chat_template: this tokenizer has no chat_template (none in "
                             "tokenizer_config.json, no chat_template.jinja); pass chat_template=...")
        special = {k: v for k, v in self.special_tokens.items() if v is not None}
        if self.additional_special_tokens:
            special["additional_special_tokens"] = list(self.additional_special_tokens)
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                    special_tokens=special, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self):
        kind = "sentencepiece" if self._is_sp else "tokenizers"
        return (f"Tokenizer({kind}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
                f"pad={self.pad_id})")


def _read_chat_template(path: pathlib.Path, config: Mapping[str, Any]) -> str | None:
    jinja_file = path / "chat_template.jinja"
    if jinja_file.exists():  # newer HF layout: the template has its own file and takes precedence
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        if "default" not in named:
            raise ValueError(f"{path}/tokenizer_config.json: chat_template list has no 'default' entry "
                             f"(names: {sorted(named)})")
        template = named["default"]
    return template


def _load_sentencepiece(proto: bytes):
    import sentencepiece  # pylint: disable=import-outside-toplevel
    sp = sentencepiece.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto)
    return sp


# ----------------------------------------------------------------------------------------------
# Tiny test tokenizer
# ----------------------------------------------------------------------------------------------

TINY_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>")

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('tiny chat template: unknown role ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    # Ids: 7 specials, then \t \n and printable ASCII as characters, then byte-fallback tokens for the
    # bytes valid UTF-8 can contain outside those (other control chars, 0x80-0xBF, 0xC2-0xF4): any
    # Python string round-trips, and 250 ids fit the "tiny" model preset's vocab of 256.
    vocab: dict[str, int] = {}
    for token in TINY_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for c in ["\t", "\n"] + [chr(b) for b in range(0x20, 0x7F)]:
        vocab[c] = len(vocab)
    fallback = [b for b in range(0x20) if b not in (0x09, 0x0A)] + [0x7F] + list(range(0x80, 0xC0)) + \
        list(range(0xC2, 0xF5))
    for b in fallback:
        vocab[f"<0x{b:02X}>"] = len(vocab)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>",
                                                     byte_fallback=True))
    tok.decoder = tokenizers.decoders.Sequence([tokenizers.decoders.ByteFallback(),
                                                tokenizers.decoders.Fuse()])
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                            for t in TINY_SPECIAL_TOKENS])
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    return tok.to_str()


def tiny_tokenizer() -> Tokenizer:
    """A deterministic 250-id character/byte tokenizer with <pad>/<bos>/<eos> and a chat template.

    Same ids in every process (no training); `encode(text, add_special_tokens=True)` prepends <bos>.
    """
    backend = tokenizers.Tokenizer.from_str(_tiny_tokenizer_json())
    config = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
              "additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"],
              "clean_up_tokenization_spaces": False, "model_max_length": 1 << 20}
    return Tokenizer(backend, config=config, chat_template=TINY_CHAT_TEMPLATE)


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies the tokenizer files of a HF folder (for exporting a checkpoint next to its tokenizer)."""
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
