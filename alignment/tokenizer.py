"""Tokenizer: a thin wrapper over `transformers.AutoTokenizer`, plus a tiny tokenizer for tests.

Loading, encoding, decoding, chat-template rendering and saving are done by transformers (its
fast, `tokenizers`-backed classes; no torch needed), so ids and rendered chat text are the ones
a model's upstream recipe sees. The wrapper adds the small surface the library uses: plain-list
`encode`/`decode` with range checks, `eos_id`/`pad_id` (pad falls back to EOS), and clear errors
for a missing folder, a special token outside the vocabulary, or a missing chat template.

`tiny_tokenizer()` builds a deterministic character-level vocabulary (250 ids, fits the "tiny"
model preset's 256) with byte fallback for non-ASCII text and a small chat template, for tests
and tiny runs.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import tokenizers

# A hard dependency imported at the top: `import transformers` is a lazy module (~0.6 s, no
# torch). Its AutoTokenizer imports torch where torch is installed (+1.5 s on first use); the
# tiny tokenizer (PreTrainedTokenizerFast) does not.
import transformers

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as strings or as serialised AddedToken dicts."""
    if isinstance(value, Mapping):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Text <-> token ids for one model, with its chat template and special-token ids.

    `hf` is the underlying `transformers` tokenizer (from `AutoTokenizer`); everything
    delegates to it.
    """

    def __init__(self, hf: transformers.PreTrainedTokenizerBase):
        if not isinstance(hf, transformers.PreTrainedTokenizerBase):
            raise TypeError(
                f"Tokenizer: expected a transformers tokenizer, got {type(hf).__name__}"
                " (use Tokenizer.from_pretrained or Tokenizer.from_tokenizers)"
            )
        self.hf = hf

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        """Loads a local tokenizer folder (`tokenizer.json` or `tokenizer.model`, plus
        `tokenizer_config.json`) with `transformers.AutoTokenizer`."""
        path = pathlib.Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"Tokenizer.from_pretrained: {path} is not a directory")
        if not ((path / "tokenizer.json").exists() or (path / "tokenizer.model").exists()):
            raise FileNotFoundError(
                f"Tokenizer.from_pretrained: {path} has neither tokenizer.json nor tokenizer.model"
            )
        _check_special_tokens(path)
        return cls(transformers.AutoTokenizer.from_pretrained(str(path)))

    @classmethod
    def from_tokenizers(
        cls, backend: tokenizers.Tokenizer, *, chat_template: str | None = None, **config
    ) -> "Tokenizer":
        """Wraps a `tokenizers.Tokenizer` built in memory; `config` holds what
        tokenizer_config.json would (`bos_token`, `eos_token`, `pad_token`, ...)."""
        for name in SPECIAL_TOKEN_NAMES:
            token = config.get(name)
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(
                    f"Tokenizer.from_tokenizers: {name}={token!r} is not in the vocabulary"
                )
        hf = transformers.PreTrainedTokenizerFast(
            tokenizer_object=backend, chat_template=chat_template, **config
        )
        return cls(hf)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes a folder `from_pretrained` (and `transformers.AutoTokenizer`) can load."""
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(path))

    save = save_pretrained  # the name alignment.checkpoint and alignment.pretrain call

    # -- vocabulary --------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (= len(transformers tokenizer))."""
        return len(self.hf)

    @property
    def chat_template(self) -> str | None:
        return self.hf.chat_template

    def token_to_id(self, token: str) -> int | None:
        """The token's id, or None when it is not in the vocabulary (never the unk id)."""
        i = self.hf.convert_tokens_to_ids(token)
        if i is None or (i == self.hf.unk_token_id and token != self.hf.unk_token):
            return None
        return int(i)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.convert_ids_to_tokens(int(i)) if 0 <= int(i) < self.vocab_size else None

    @property
    def bos_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def eos_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def pad_id(self) -> int | None:
        """The pad token's id, or the EOS id where the tokenizer defines no pad token."""
        pad = self.hf.pad_token_id
        return self.eos_id if pad is None else pad

    @property
    def unk_id(self) -> int | None:
        return self.hf.unk_token_id

    @property
    def bos_token(self) -> str | None:
        return self.hf.bos_token

    @property
    def eos_token(self) -> str | None:
        return self.hf.eos_token

    @property
    def pad_token(self) -> str | None:
        return self.hf.pad_token

    # -- text <-> ids ------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; `add_special_tokens` adds what the model's recipe adds (BOS...)."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode: text must be a str, got {type(text).__name__}")
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> list[list[int]]:
        return [self.encode(t, add_special_tokens) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"Tokenizer.decode: ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})"
            )
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    # -- chat --------------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        chat_template: str | None = None,
        **kwargs,
    ) -> str | list[int]:
        """Renders one conversation (`[{"role", "content"}, ...]`) with the model's template.

        Returns the text, or its ids (no special tokens added beyond the template's) when
        `tokenize`. Extra keyword arguments (`enable_thinking=False`, `tools=[...]`, ...) are
        template variables, as in `transformers`.
        """
        if (
            not isinstance(messages, (list, tuple))
            or not messages
            or not all(isinstance(m, Mapping) for m in messages)
        ):
            raise ValueError(
                f"apply_chat_template: messages must be a non-empty list of dicts, got {messages!r}"
            )
        if chat_template is None and self.hf.chat_template is None:
            raise ValueError(
                "apply_chat_template: this tokenizer has no chat_template (none in "
                "tokenizer_config.json, no chat_template.jinja); "
                "pass chat_template=..."
            )
        out = self.hf.apply_chat_template(
            list(messages),
            add_generation_prompt=add_generation_prompt,
            tokenize=tokenize,
            return_dict=False,
            chat_template=chat_template,
            **kwargs,
        )
        return list(out) if tokenize else out

    def __repr__(self):
        return (
            f"Tokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size}, "
            f"bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id})"
        )


def _check_special_tokens(path: pathlib.Path) -> None:
    """AutoTokenizer silently adds a configured special token missing from tokenizer.json as
    a new id (past the model's vocabulary); refuse it with the file and key named."""
    config_file, vocab_file = path / "tokenizer_config.json", path / "tokenizer.json"
    if not (config_file.exists() and vocab_file.exists()):
        return
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    wanted = {name: _token_content(config.get(name)) for name in SPECIAL_TOKEN_NAMES}
    wanted = {name: token for name, token in wanted.items() if token is not None}
    if not wanted:
        return
    backend = tokenizers.Tokenizer.from_file(str(vocab_file))
    for name, token in wanted.items():
        if backend.token_to_id(token) is None:
            raise ValueError(
                f"{config_file}: {name}={token!r} is not in the vocabulary of {vocab_file.name}"
            )


# ----------------------------------------------------------------------------------------------
# Tiny test tokenizer
# ----------------------------------------------------------------------------------------------

TINY_SPECIAL_TOKENS = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<unk>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
)

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('tiny chat template: unknown role ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    # Ids: 7 specials, then \t \n and printable ASCII as characters, then byte-fallback tokens for
    # the bytes valid UTF-8 can contain outside those (other control chars, 0x80-0xBF,
    # 0xC2-0xF4): any Python string round-trips, and 250 ids fit the "tiny" preset's vocab of 256.
    vocab: dict[str, int] = {}
    for token in TINY_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for c in ["\t", "\n"] + [chr(b) for b in range(0x20, 0x7F)]:
        vocab[c] = len(vocab)
    fallback = (
        [b for b in range(0x20) if b not in (0x09, 0x0A)]
        + [0x7F]
        + list(range(0x80, 0xC0))
        + list(range(0xC2, 0xF5))
    )
    for b in fallback:
        vocab[f"<0x{b:02X}>"] = len(vocab)
    tok = tokenizers.Tokenizer(
        tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True)
    )
    tok.decoder = tokenizers.decoders.Sequence(
        [tokenizers.decoders.ByteFallback(), tokenizers.decoders.Fuse()]
    )
    tok.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL_TOKENS]
    )
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return tok.to_str()


def tiny_tokenizer() -> Tokenizer:
    """A deterministic 250-id character/byte tokenizer with <pad>/<bos>/<eos> and a chat template.

    Same ids in every process (no training); `encode(text, add_special_tokens=True)` prepends <bos>.
    """
    return Tokenizer.from_tokenizers(
        tokenizers.Tokenizer.from_str(_tiny_tokenizer_json()),
        chat_template=TINY_CHAT_TEMPLATE,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
