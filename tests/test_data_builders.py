"""TFDS builders prepared from tiny local files (no network, no TensorFlow), read back as
ArrayRecord with tfds.data_source, and fed through make_iterator."""

import gzip
import json

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from alignment.data import BadRowError, builders, default_data_config, make_iterator  # noqa: E402
from alignment.tokenizer import tiny_tokenizer  # noqa: E402

tfds.disable_progress_bar()


def write_jsonl(path, rows, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)


def tfds_cfg(kind, builder, tmp_path, **over):
    cfg = default_data_config(kind)
    cfg.update(
        source="tfds",
        builder=builder,
        manual_dir=str(tmp_path / "manual"),
        data_dir=str(tmp_path / "data"),
        shuffle=False,
        max_len=128,
        max_prompt_len=96,
    )
    cfg.update(over)
    return cfg


def decode(tok, ids, mask):
    return tok.decode(ids[mask == 1])


HH = [
    {
        "chosen": "\n\nHuman: hi there\n\nAssistant: hello!",
        "rejected": "\n\nHuman: hi there\n\nAssistant: go away",
    },
    {
        "chosen": "\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: sure?\n\nAssistant: yes",
        "rejected": "\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: sure?\n\nAssistant: no",
    },
]


def test_hh_rlhf_round_trips_the_transcripts(tmp_path):
    write_jsonl(tmp_path / "manual/helpful-base/train.jsonl.gz", HH, gz=True)
    write_jsonl(tmp_path / "manual/helpful-base/test.jsonl.gz", HH[:1], gz=True)
    cfg = tfds_cfg("preference", "alignment_hh_rlhf", tmp_path)
    tok = tiny_tokenizer()
    it = make_iterator(cfg, tok, kind="preference", split="train", global_batch_size=2, seed=0)
    batch = next(it)
    got = set()
    for r in range(2):
        for side in ("chosen", "rejected"):
            ids, am = batch[f"{side}_input_ids"][r], batch[f"{side}_attention_mask"][r]
            text = tok.decode(ids[am == 1])
            assert text.startswith("<bos>") and text.endswith("<eos>")
            got.add((side, text[len("<bos>") : -len("<eos>")]))
            # only the last Assistant turn is trained
            response = decode(tok, ids, batch[f"{side}_loss_mask"][r])
            assert "Human" not in response and response.endswith("<eos>")
    assert got == {(s, row[s]) for row in HH for s in ("chosen", "rejected")}
    assert it.report["rows_read"] == 2 and it.report["rows_skipped"] == 0
    # the prepared dataset reads back through the public TFDS API without TensorFlow
    src = tfds.data_source("alignment_hh_rlhf", data_dir=cfg.data_dir)
    assert len(src["train"]) == 2 and len(src["test"]) == 1
    row = src["test"][0]
    assert json.loads(row["prompt"]) == [{"role": "user", "content": "hi there"}]
    assert json.loads(row["chosen"]) == [{"role": "assistant", "content": "hello!"}]
    # the conversational rows go through the chat template too
    cfg.chat_template = True
    batch = next(
        make_iterator(cfg, tok, kind="preference", split="test", global_batch_size=1, seed=0)
    )
    assert decode(tok, batch["chosen_input_ids"][0], batch["chosen_loss_mask"][0]) == "hello!<eos>"


def test_hh_rlhf_bad_rows_raise_or_are_stored(tmp_path):
    bad = [
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: OTHER\n\nAssistant: c"},
        {"chosen": "no markers at all", "rejected": "\n\nHuman: a\n\nAssistant: c"},
        {
            "chosen": "\n\nHuman: a\n\nAssistant: same",
            "rejected": "\n\nHuman: a\n\nAssistant: same",
        },
    ]
    write_jsonl(tmp_path / "manual/train.jsonl", HH + bad)
    cfg = tfds_cfg("preference", "alignment_hh_rlhf", tmp_path)
    path = str(tmp_path / "manual/train.jsonl")
    with pytest.raises(BadRowError, match="prompt_mismatch") as e:
        make_iterator(
            cfg, tiny_tokenizer(), kind="preference", split="train", global_batch_size=1, seed=0
        )
    assert (e.value.source, e.value.row, e.value.field) == (path, 3, "rejected")
    cfg.on_bad_row = "skip"
    it = make_iterator(
        cfg, tiny_tokenizer(), kind="preference", split="train", global_batch_size=1, seed=0
    )
    want = {"prompt_mismatch": 1, "bad_message": 1, "chosen_equals_rejected": 1}
    assert it.report["skipped_by_reason"] == want
    assert (it.report["rows_read"], it.report["rows_kept"]) == (5, 2)
    # stored with the dataset: visible to any reader of the prepared directory
    meta = tfds.builder_from_directory(str(tmp_path / "data/alignment_hh_rlhf/1.0.0")).info.metadata
    assert meta["bad_rows"]["train"]["skipped_by_reason"] == want
    # a dataset prepared with skipping is refused by a run that asks for errors
    cfg.on_bad_row = "raise"
    with pytest.raises(BadRowError, match="prepared with on_bad_row='skip'"):
        make_iterator(
            cfg, tiny_tokenizer(), kind="preference", split="train", global_batch_size=1, seed=0
        )


def test_ultrafeedback_from_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def conv(q, a):
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

    rows = [
        {
            "prompt": f"q{i}",
            "prompt_id": str(i),
            "chosen": conv(f"q{i}", f"good {i}"),
            "rejected": conv(f"q{i}", f"bad {i}"),
            "score_chosen": 8.0,
            "score_rejected": 2.0,
        }
        for i in range(3)
    ]
    (tmp_path / "manual/data").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows), tmp_path / "manual/data/train_prefs-00000-of-00001.parquet"
    )
    cfg = tfds_cfg("preference", "alignment_ultrafeedback", tmp_path, chat_template=True)
    tok = tiny_tokenizer()
    it = make_iterator(cfg, tok, kind="preference", split="train", global_batch_size=3, seed=0)
    batch = next(it)
    chosen = sorted(
        decode(tok, batch["chosen_input_ids"][r], batch["chosen_loss_mask"][r]) for r in range(3)
    )
    assert chosen == [f"good {i}<eos>" for i in range(3)]
    assert tok.decode(
        batch["rejected_input_ids"][0][batch["rejected_attention_mask"][0] == 1]
    ).startswith("<bos><|user|>\nq")


def test_tldr_comparisons(tmp_path):
    def comp(i, split, choice):
        return {
            "info": {
                "id": f"t{i}",
                "post": f"post {i} ",
                "title": f"title {i}",
                "subreddit": "tifu",
            },
            "summaries": [
                {"text": f" summary A{i}", "policy": "p"},
                {"text": f"summary B{i}", "policy": "q"},
            ],
            "choice": choice,
            "split": split,
            "worker": "w",
        }

    rows = [comp(0, "train", 0), comp(1, "train", 1), comp(2, "valid1", 1), comp(3, "valid2", 0)]
    write_jsonl(tmp_path / "manual/comparisons/batch3.json", rows)
    write_jsonl(tmp_path / "manual/comparisons/batch0_cnndm.json", [{"info": {"article": "x"}}])
    cfg = tfds_cfg("preference", "alignment_tldr", tmp_path)
    cfg.splits.eval = "validation"
    tok = tiny_tokenizer()
    src = None
    for split, idx in (("train", (0, 1)), ("eval", (2, 3))):
        it = make_iterator(cfg, tok, kind="preference", split=split, global_batch_size=2, seed=0)
        assert it.report["rows_read"] == 2, it.report
        batch = next(it)
        for r in range(2):
            ids, am = batch["chosen_input_ids"][r], batch["chosen_attention_mask"][r]
            text = tok.decode(ids[am == 1])
            i = int(text.split("post ")[1][0])
            assert i in idx
            assert text == (
                f"<bos>SUBREDDIT: r/tifu\n\nTITLE: title {i}\n\nPOST: post {i}\n\nTL;DR: "
                f"summary {'AB'[rows[i]['choice']]}{i}<eos>"
            )
            src = src or tfds.data_source("alignment_tldr", data_dir=cfg.data_dir)
    assert set(src) == {"train", "validation"}


def test_gsm8k_sft(tmp_path):
    rows = [
        {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"},
        {"question": "What is 1000 + 234?", "answer": "1000+234=1234\n#### 1,234"},
    ]
    write_jsonl(tmp_path / "manual/grade_school_math/data/train.jsonl", rows)
    write_jsonl(tmp_path / "manual/grade_school_math/data/test.jsonl", rows[:1])
    cfg = tfds_cfg("sft", "alignment_gsm8k", tmp_path, packing=True)
    tok = tiny_tokenizer()
    batch = next(make_iterator(cfg, tok, kind="sft", split="train", global_batch_size=1, seed=0))
    assert batch["segment_ids"][0].max() == 2  # both examples packed into one row
    trained = decode(tok, batch["input_ids"][0], batch["loss_mask"][0])
    assert trained.count("<eos>") == 2 and "#### 5<eos>" in trained
    src = tfds.data_source("alignment_gsm8k", data_dir=cfg.data_dir)
    assert sorted(json.loads(src["train"][i]["final_answer"]) for i in range(2)) == ["1234", "5"]
    # preparation validates every split: a bad test row fails the whole build, named
    write_jsonl(
        tmp_path / "bad/manual/test.jsonl",
        rows[:1] + [{"question": "q", "answer": "no final line"}],
    )
    with pytest.raises(BadRowError, match="missing_final_answer.*test.jsonl, row 2"):
        make_iterator(
            tfds_cfg("sft", "alignment_gsm8k", tmp_path / "bad"),
            tok,
            kind="sft",
            split="train",
            global_batch_size=1,
            seed=0,
        )
    with pytest.raises(ValueError, match="holds sft data, not preference"):
        make_iterator(
            tfds_cfg("preference", "alignment_gsm8k", tmp_path),
            tok,
            kind="preference",
            split="train",
            global_batch_size=1,
            seed=0,
        )


def test_generic_builder_with_custom_fields_matches_jsonl_source(tmp_path):
    rows = [{"meta": {"question": f"q{i}"}, "win": f"yes {i}", "lose": f"no {i}"} for i in range(4)]
    write_jsonl(tmp_path / "manual/train.jsonl", rows)
    tok = tiny_tokenizer()
    cfg = tfds_cfg("preference", "alignment_generic", tmp_path)
    cfg.fields.update(prompt="meta.question", chosen="win", rejected="lose")
    via_tfds = next(
        make_iterator(cfg, tok, kind="preference", split="train", global_batch_size=4, seed=0)
    )
    cfg.update(source="jsonl")
    cfg.files.train = str(tmp_path / "manual/train.jsonl")
    via_jsonl = next(
        make_iterator(cfg, tok, kind="preference", split="train", global_batch_size=4, seed=0)
    )
    # same rows (TFDS stores them in its own order): compare as sets of rows
    for k in via_tfds:
        assert sorted(map(tuple, via_tfds[k])) == sorted(map(tuple, via_jsonl[k])), k
    # a different field mapping is a different prepared dataset, not a stale cache hit
    b1 = builders.generic_config(kind="preference", fmt="auto", fields=dict(cfg.fields))
    cfg.fields.chosen = "lose"
    b2 = builders.generic_config(kind="preference", fmt="auto", fields=dict(cfg.fields))
    assert b1.name != b2.name


def test_unknown_builder_and_missing_manual_dir(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="not one of"):
        make_iterator(
            tfds_cfg("sft", "gsm8k_typo", tmp_path),
            tok,
            kind="sft",
            split="train",
            global_batch_size=1,
            seed=0,
        )
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual/README").write_text("nothing useful")
    with pytest.raises(FileNotFoundError, match="no input files"):
        make_iterator(
            tfds_cfg("sft", "alignment_gsm8k", tmp_path),
            tok,
            kind="sft",
            split="train",
            global_batch_size=1,
            seed=0,
        )
    np.testing.assert_equal(
        sorted(builders.BUILDERS),
        sorted(
            [
                "alignment_generic",
                "alignment_gsm8k",
                "alignment_hh_rlhf",
                "alignment_tldr",
                "alignment_ultrafeedback",
            ]
        ),
    )
