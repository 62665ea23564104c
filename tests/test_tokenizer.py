"""Tokenizer: the transformers-backed wrapper on the real Qwen3 tokenizer, sentencepiece and
the tiny tokenizer; golden outputs of the earlier implementation; no torch needed."""

import io
import json
import pathlib
import subprocess
import sys

import jinja2
import pytest

from alignment.tokenizer import Tokenizer, tiny_tokenizer

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\r\nmixed",
    "unicode: héllo wörld, naïve café, ß, Ωμέγα, Привет, 你好世界, こんにちは, 안녕하세요 😀🚀👩‍👩‍👧",
    'def f(x):\n    return {"a": [1, 2, 3]}  # comment\n\tpass\n',
    "numbers 1234567890 3.14159 -42 1e-5",
    "special-looking text <|im_start|>user\nhi<|im_end|> and </think>",
    "",
    " ",
    "a" * 300,
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one, with unicode: ünïcödé 😀"},
    ],
    [
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nThe answer is 4."},
    ],
]


SENTIMENT_BASE = pathlib.Path(__file__).parents[1] / "alignment" / "assets" / "bases" / "sentiment"


def _hf(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def qwen3(qwen3_tokenizer_dir):
    """(ours, transformers') loaded once: loading the 150k vocabulary takes ~2 s each."""
    return Tokenizer.from_pretrained(qwen3_tokenizer_dir), _hf(qwen3_tokenizer_dir)


# -- Qwen3 parity ----------------------------------------------------------------------------------


def test_qwen3_ids_match_transformers(qwen3):
    ours, ref = qwen3
    for text in TEXTS:
        expected = ref.encode(text, add_special_tokens=False)
        assert ours.encode(text) == expected, text
        assert ours.encode(text, add_special_tokens=True) == ref.encode(
            text, add_special_tokens=True
        )
        for skip in (False, True):
            assert ours.decode(expected, skip_special_tokens=skip) == ref.decode(
                expected, skip_special_tokens=skip
            ), text
    assert ours.encode_batch(TEXTS) == [ref.encode(t, add_special_tokens=False) for t in TEXTS]


def test_qwen3_special_ids(qwen3):
    ours, ref = qwen3
    assert ours.bos_id == ref.bos_token_id  # None for Qwen3
    assert ours.eos_id == ref.eos_token_id == ref.convert_tokens_to_ids("<|im_end|>")
    assert ours.pad_id == ref.pad_token_id
    assert ours.vocab_size == len(ref)


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_qwen3_chat_template_matches_transformers(qwen3, conversation, add_generation_prompt):
    ours, ref = qwen3
    messages = CONVERSATIONS[conversation]
    kwargs = dict(add_generation_prompt=add_generation_prompt)
    text = ours.apply_chat_template(messages, **kwargs)
    assert text == ref.apply_chat_template(messages, tokenize=False, **kwargs)
    assert ours.apply_chat_template(messages, tokenize=True, **kwargs) == ref.encode(
        text, add_special_tokens=False
    )
    # Template kwargs pass through (Qwen3's thinking switch).
    assert ours.apply_chat_template(
        messages, enable_thinking=False, **kwargs
    ) == ref.apply_chat_template(messages, tokenize=False, enable_thinking=False, **kwargs)


def test_qwen3_chat_template_tools_and_none_content(qwen3):
    ours, ref = qwen3
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Adds <two> numbers & more",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "add 1 and 2"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": None,
            "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
        },
        {"role": "tool", "content": "3"},
    ]
    kwargs = dict(tools=tools, add_generation_prompt=True)
    assert ours.apply_chat_template(messages, **kwargs) == ref.apply_chat_template(
        messages, tokenize=False, **kwargs
    )


def test_qwen3_save_roundtrip(qwen3, tmp_path):
    ours, _ = qwen3
    ours.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert (again.eos_id, again.pad_id, again.bos_id) == (ours.eos_id, ours.pad_id, ours.bos_id)
    assert [again.encode(t) for t in TEXTS] == [ours.encode(t) for t in TEXTS]
    assert again.apply_chat_template(CONVERSATIONS[1]) == ours.apply_chat_template(CONVERSATIONS[1])


# -- tiny tokenizer --------------------------------------------------------------------------------


def test_tiny_tokenizer_is_deterministic_and_small():
    tok = tiny_tokenizer()
    assert tok.vocab_size <= 256  # fits the "tiny" model preset
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    # Golden ids: tiny configs and cached test data depend on them. If you change the vocabulary on
    # purpose, update these numbers and say so in the change note.
    assert tok.encode("Hi!\n") == [49, 82, 10, 8]
    assert tok.encode("é") == [200, 176]
    assert tiny_tokenizer().encode("same text every time") == tok.encode("same text every time")


def test_tiny_tokenizer_roundtrips_any_text():
    tok = tiny_tokenizer()
    for text in TEXTS + ["\x00\x01\x7f control", "\u2028\ufeff"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.unk_id not in ids, text
        assert tok.decode(ids) == text
    assert tok.encode("x", add_special_tokens=True) == [tok.bos_id] + tok.encode("x")


def test_tiny_chat_template():
    tok = tiny_tokenizer()
    messages = CONVERSATIONS[1]
    text = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert text == (
        "<bos><|system|>\nYou are terse.<eos>\n<|user|>\nName a colour.<eos>\n"
        "<|assistant|>\nBlue.<eos>\n<|user|>\nAnother one, with unicode: ünïcödé 😀<eos>\n"
        "<|assistant|>\n"
    )
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert ids[0] == tok.bos_id and ids.count(tok.eos_id) == 4
    assert ids[-2:] == [tok.token_to_id("<|assistant|>"), tok.encode("\n")[0]]
    assert tok.decode(ids) == text
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_tiny_tokenizer_saved_folder_loads_in_transformers(tmp_path):
    tok = tiny_tokenizer()
    tok.save(tmp_path)
    ours, ref = Tokenizer.from_pretrained(tmp_path), _hf(tmp_path)
    for text in TEXTS:
        assert ours.encode(text) == tok.encode(text) == ref.encode(text, add_special_tokens=False)
        assert ours.encode(text, True) == ref.encode(text, add_special_tokens=True)
    assert (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id) == (1, 2, 0)
    for messages in CONVERSATIONS:
        assert ours.apply_chat_template(
            messages, add_generation_prompt=True
        ) == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# -- sentencepiece ---------------------------------------------------------------------------------

SP_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a tiny sentencepiece model trained inside a unit test",
    "hello world, hello tokenizer, hello chat template",
    "numbers like 123 and 456 appear sometimes",
] * 20


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    sentencepiece = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SP_CORPUS),
        model_writer=model,
        vocab_size=320,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        pad_id=3,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
        num_threads=1,
    )
    path = tmp_path_factory.mktemp("sp")
    (path / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "pad_token": "<pad>",
        "chat_template": "{% for m in messages %}{{ bos_token + m['role'] + ': ' + m['content']"
        " + eos_token }}{% endfor %}",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_sentencepiece_loads_and_roundtrips(sp_dir, tmp_path):
    import sentencepiece  # pylint: disable=import-outside-toplevel

    tok = Tokenizer.from_pretrained(sp_dir)
    ref = sentencepiece.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3, ref.get_piece_size())
    for text in ["hello world", "the lazy fox, 123", "unseen: ünïcödé 😀"]:
        ids = tok.encode(text)
        assert ids == ref.encode(text)
        assert tok.decode(ids) == text  # byte fallback: nothing lost
        # special tokens added as transformers adds them for this folder
        assert tok.encode(text, add_special_tokens=True) == _hf(sp_dir).encode(text)
    chat = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=True)
    assert (
        chat[0] == tok.bos_id and chat[-1] == tok.eos_id
    )  # special tokens in text become their ids
    # decoding follows transformers (which puts a space after <s> for sentencepiece's "▁user")
    assert tok.decode(chat) == _hf(sp_dir).decode(chat)
    assert tok.decode(chat, skip_special_tokens=True) == "user: hello"
    tok.save(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.encode("hello world", True) == tok.encode("hello world", True)


# -- errors ----------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([1, 999])
    with pytest.raises(TypeError, match="must be a str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="non-empty list"):
        tok.apply_chat_template([])
    with pytest.raises(ValueError, match="non-empty list of dicts"):
        tok.apply_chat_template(["hello"])
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="has no chat_template"):
        Tokenizer.from_pretrained(SENTIMENT_BASE).apply_chat_template(CONVERSATIONS[0])
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["eos_token"] = "<not-a-token>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="eos_token='<not-a-token>' is not in the vocabulary"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pad_token='<nope>' is not in the vocabulary"):
        Tokenizer.from_tokenizers(tok.hf.backend_tokenizer, pad_token="<nope>")


# -- no torch --------------------------------------------------------------------------------------

NO_TORCH = """
import importlib.machinery, json, sys

class NoTorch(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            return None
        return super().find_spec(name, path, target)

sys.meta_path = [NoTorch if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
from alignment.tokenizer import Tokenizer, tiny_tokenizer
tok = Tokenizer.from_pretrained(sys.argv[1])
tiny = tiny_tokenizer()
chat = [{"role": "user", "content": "hi"}]
print(json.dumps({"torch": "torch" in sys.modules, "ids": tok.encode("Hello, world!"),
                  "chat": tiny.apply_chat_template(chat, add_generation_prompt=True)}))
"""


def test_works_without_torch():
    # transformers' fast tokenizers need no torch: load, encode and render with torch hidden.
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(SENTIMENT_BASE)],
        check=True,
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).parents[1],
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False
    assert result["ids"] == Tokenizer.from_pretrained(SENTIMENT_BASE).encode("Hello, world!")
    assert result["chat"] == "<bos><|user|>\nhi<eos>\n<|assistant|>\n"


# -- golden outputs --------------------------------------------------------------------------------
# tests/tokenizer_golden.json holds what the hand-written implementation this module replaced
# produced (ids, decoded text, rendered chat text and chat ids) on the Qwen3 fixture, the shipped
# sentiment base and the tiny tokenizer. Trained checkpoints and cached token data depend on them.

GOLDEN_FILE = pathlib.Path(__file__).with_name("tokenizer_golden.json")
GOLDEN_HINT = (
    "differs from tests/tokenizer_golden.json. Checkpoints and cached data were tokenized with the "
    "recorded values: fix alignment/tokenizer.py. Only if the change is intended (e.g. a "
    "transformers upgrade changed a template on purpose) re-record the file with "
    "`python tests/test_tokenizer.py --regenerate-golden` and say why in the commit message."
)


def _golden_outputs(tok, golden):
    """The golden file's structure, with every output recomputed by `tok` from its inputs."""
    out = {k: getattr(tok, k) for k in ("vocab_size", "bos_id", "eos_id", "pad_id")}
    out["encode"] = []
    for e in golden["encode"]:
        ids = tok.encode(e["text"])
        out["encode"].append(
            {
                "text": e["text"],
                "ids": ids,
                "ids_special": tok.encode(e["text"], add_special_tokens=True),
                "decode": tok.decode(ids),
                "decode_skip": tok.decode(ids, skip_special_tokens=True),
            }
        )
    out["chat"] = []
    for c in golden["chat"]:
        kw = dict(c["kwargs"], add_generation_prompt=c["add_generation_prompt"])
        out["chat"].append(
            {
                "messages": c["messages"],
                "kwargs": c["kwargs"],
                "add_generation_prompt": c["add_generation_prompt"],
                "text": tok.apply_chat_template(c["messages"], **kw),
                "ids": tok.apply_chat_template(c["messages"], tokenize=True, **kw),
            }
        )
    return out


def _golden_tokenizers(qwen3_dir=None):
    toks = {
        "sentiment_base": lambda: Tokenizer.from_pretrained(SENTIMENT_BASE),
        "tiny": tiny_tokenizer,
    }
    if qwen3_dir is not None:
        toks["qwen3"] = lambda: Tokenizer.from_pretrained(qwen3_dir)
    return toks


def _assert_matches_golden(name, tok):
    golden = json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))[name]
    got = _golden_outputs(tok, golden)
    for key in ("vocab_size", "bos_id", "eos_id", "pad_id"):
        assert got[key] == golden[key], f"{name}: {key} {got[key]!r} {GOLDEN_HINT}"
    assert len(golden["encode"]) >= 10  # the file was read, not an empty list
    for g, e in zip(golden["encode"], got["encode"]):
        for key in ("ids", "ids_special", "decode", "decode_skip"):
            assert e[key] == g[key], f"{name}: {key} of {g['text'][:60]!r} {GOLDEN_HINT}"
    for g, c in zip(golden["chat"], got["chat"]):
        where = (
            f"{name}: chat {g['messages']!r} kwargs={g['kwargs']!r} "
            f"add_generation_prompt={g['add_generation_prompt']}"
        )
        assert c["text"] == g["text"], f"{where}: rendered text {GOLDEN_HINT}"
        assert c["ids"] == g["ids"], f"{where}: ids {GOLDEN_HINT}"


def test_qwen3_matches_golden(qwen3):
    _assert_matches_golden("qwen3", qwen3[0])


@pytest.mark.parametrize("name", ["sentiment_base", "tiny"])
def test_shipped_and_tiny_tokenizers_match_golden(name):
    _assert_matches_golden(name, _golden_tokenizers()[name]())


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate-golden"]:
    _old = json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))
    import conftest  # the same fixture location the test session uses

    _dir = conftest.SHARED / "fixtures" / "qwen3-tokenizer"
    _new = {"about": _old["about"]}
    for _name, _make in _golden_tokenizers(_dir if _dir.is_dir() else None).items():
        _new[_name] = _golden_outputs(_make(), _old[_name])
    _new = {k: _new.get(k, _old[k]) for k in _old}
    _lines = ["{", f' "about": {json.dumps(_new["about"], ensure_ascii=False)},']
    _names = [k for k in _new if k != "about"]
    for _i, _name in enumerate(_names):  # one entry per line: reviewable diffs
        _t = _new[_name]
        _lines.append(f' "{_name}": {{')
        _lines += [
            f'  "{k}": {json.dumps(_t[k])},' for k in ("vocab_size", "bos_id", "eos_id", "pad_id")
        ]
        for _key, _end in (("encode", ","), ("chat", "")):
            _lines += [
                f'  "{_key}": [',
                ",\n".join("   " + json.dumps(e, ensure_ascii=False) for e in _t[_key]),
                "  ]" + _end,
            ]
        _lines.append(" }" + ("," if _i < len(_names) - 1 else ""))
    GOLDEN_FILE.write_text("\n".join(_lines + ["}"]) + "\n", encoding="utf-8")
