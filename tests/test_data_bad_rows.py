"""Bad rows: by default a clear error naming file, row and field; with on_bad_row='skip'
counted by reason, logged and returned. The whole matrix, through the JSONL source."""

import json
import logging

import pytest

from alignment.data import BadRowError, default_data_config, make_iterator
from alignment.tokenizer import tiny_tokenizer

GOOD_PREF = {"prompt": "sort: 2 1\n", "chosen": "1 2", "rejected": "2 1"}
GOOD_SFT = {"prompt": "sort: 2 1\n", "completion": "1 2"}


def _line(obj):
    return obj if isinstance(obj, bytes) else (json.dumps(obj) + "\n").encode()


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# (kind, bad line, reason, field named in the error or None)
MATRIX = {
    "missing_field": ("preference", {"prompt": "p", "chosen": "a"}, "missing_field", "rejected"),
    "null_field": (
        "preference",
        {"prompt": "p", "chosen": "a", "rejected": None},
        "missing_field",
        "rejected",
    ),
    "empty_chosen": (
        "preference",
        {"prompt": "p", "chosen": "  ", "rejected": "b"},
        "empty_chosen",
        "chosen",
    ),
    "empty_rejected": (
        "preference",
        {"prompt": "p", "chosen": "a", "rejected": ""},
        "empty_rejected",
        "rejected",
    ),
    "chosen_equals_rejected": (
        "preference",
        {"prompt": "p", "chosen": "a", "rejected": "a"},
        "chosen_equals_rejected",
        "rejected",
    ),
    "non_string": (
        "preference",
        {"prompt": "p", "chosen": 7, "rejected": "b"},
        "non_string",
        "chosen",
    ),
    "non_string_prompt": (
        "preference",
        {"prompt": ["p"], "chosen": "a", "rejected": "b"},
        "non_string",
        "prompt",
    ),
    "non_string_message": (
        "preference",
        {"prompt": "p", "chosen": msgs(("assistant", 3)), "rejected": msgs(("assistant", "b"))},
        "non_string",
        "chosen[0].content",
    ),
    "message_without_role": (
        "preference",
        {"prompt": "p", "chosen": [{"content": "a"}], "rejected": msgs(("assistant", "b"))},
        "bad_message",
        "chosen[0]",
    ),
    "unknown_role": (
        "preference",
        {"prompt": "p", "chosen": msgs(("robot", "a")), "rejected": msgs(("assistant", "b"))},
        "bad_message",
        "chosen[0].role",
    ),
    "prompt_mismatch": (
        "preference",
        {
            "chosen": msgs(("user", "q1"), ("assistant", "a")),
            "rejected": msgs(("user", "q2"), ("assistant", "b")),
        },
        "prompt_mismatch",
        "rejected",
    ),
    "empty_assistant": (
        "preference",
        {
            "chosen": msgs(("user", "q"), ("assistant", "")),
            "rejected": msgs(("user", "q"), ("assistant", "b")),
        },
        "empty_chosen",
        "chosen",
    ),
    "malformed_json": ("preference", b'{"prompt": "p", "chosen": "a",\n', "malformed_json", None),
    "invalid_utf8": (
        "preference",
        b'{"prompt": "p\xff\xfe", "chosen": "a", "rejected": "b"}\n',
        "invalid_utf8",
        None,
    ),
    "not_an_object": ("preference", b'["p", "a", "b"]\n', "not_an_object", None),
    "prompt_too_long": (
        "preference",
        {"prompt": "x" * 40, "chosen": "a", "rejected": "b"},
        "no_response_tokens",
        "chosen",
    ),
    "sft_missing_completion": ("sft", {"prompt": "p"}, "missing_field", "completion"),
    "sft_empty_completion": (
        "sft",
        {"prompt": "p", "completion": "\n"},
        "empty_completion",
        "completion",
    ),
    "sft_no_assistant": (
        "sft",
        {"messages": msgs(("user", "hi"))},
        "no_assistant_turn",
        "messages",
    ),
    "sft_prompt_too_long": (
        "sft",
        {"prompt": "x" * 40, "completion": "a"},
        "no_response_tokens",
        "completion",
    ),
}


def _setup(tmp_path, kind, bad):
    good = GOOD_PREF if kind == "preference" else GOOD_SFT
    path = tmp_path / "train.jsonl"
    path.write_bytes(_line(good) + _line(bad) + b"\n" + _line(good))  # blank lines are not rows
    cfg = default_data_config(kind)
    cfg.source = "jsonl"
    cfg.files.train = str(path)
    cfg.max_len = 24
    cfg.max_prompt_len = 24  # a prompt may fill the row: then no response token survives
    return cfg, path


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_bad_row_raises_naming_file_row_field(tmp_path, case):
    kind, bad, reason, field = MATRIX[case]
    cfg, path = _setup(tmp_path, kind, bad)
    with pytest.raises(BadRowError) as e:
        make_iterator(cfg, tiny_tokenizer(), kind=kind, split="train", global_batch_size=2, seed=0)
    err = e.value
    assert (err.reason, err.source, err.row, err.field) == (reason, str(path), 2, field)
    msg = str(err)
    assert f"{path}, row 2" in msg and reason in msg and "on_bad_row='skip'" in msg
    if field:
        assert repr(field) in msg


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_bad_row_skipped_is_counted_and_logged(tmp_path, case, caplog):
    kind, bad, reason, _ = MATRIX[case]
    cfg, path = _setup(tmp_path, kind, bad)
    cfg.on_bad_row = "skip"
    with caplog.at_level(logging.WARNING):
        it = make_iterator(
            cfg, tiny_tokenizer(), kind=kind, split="train", global_batch_size=2, seed=0
        )
    assert it.report["skipped_by_reason"] == {reason: 1}
    assert (it.report["rows_read"], it.report["rows_kept"], it.report["rows_skipped"]) == (3, 2, 1)
    assert f"{path}, row 2" in it.report["examples"][reason][0]
    assert any(
        f"{reason}=1" in r.getMessage() and "kept 2 of 3" in r.getMessage() for r in caplog.records
    )
    assert it.num_examples == 2
    next(it)


def test_many_bad_rows_all_counted(tmp_path):
    lines = [_line(GOOD_PREF)]
    reasons = {}
    for case, (kind, bad, reason, _) in MATRIX.items():
        if kind == "preference":
            lines.append(_line(bad))
            reasons[reason] = reasons.get(reason, 0) + 1
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"".join(lines))
    cfg = default_data_config("preference")
    cfg.update(source="jsonl", on_bad_row="skip", max_len=24, max_prompt_len=24)
    cfg.files.train = str(path)
    it = make_iterator(
        cfg, tiny_tokenizer(), kind="preference", split="train", global_batch_size=1, seed=0
    )
    assert it.report["skipped_by_reason"] == reasons
    assert it.report["rows_read"] == len(lines)
    assert it.report["rows_kept"] + it.report["rows_skipped"] == len(lines)


def test_missing_file_pattern_is_an_error(tmp_path):
    cfg = default_data_config("sft")
    cfg.source = "jsonl"
    cfg.files.train = str(tmp_path / "nope*.jsonl")
    with pytest.raises(FileNotFoundError, match="nope"):
        make_iterator(cfg, tiny_tokenizer(), kind="sft", split="train", global_batch_size=1, seed=0)
