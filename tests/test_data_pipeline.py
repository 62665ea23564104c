"""Data pipeline: formatting, truncation, packing, batching, sharding and exact resume."""

import json

import numpy as np
import pytest

from alignment.data import (
    BadRowError,
    check_data_config,
    default_data_config,
    formatting,
    load_examples,
    make_iterator,
    packing,
    synthetic,
)
from alignment.data.records import BadRowReport
from alignment.tokenizer import Tokenizer, tiny_tokenizer

SFT_KEYS = {"input_ids", "attention_mask", "loss_mask", "segment_ids", "positions"}
PREF_KEYS = {
    f"{s}_{k}" for s in ("chosen", "rejected") for k in ("input_ids", "attention_mask", "loss_mask")
}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def small_cfg(kind, **over):
    cfg = default_data_config(kind)
    cfg.synthetic.num_examples = 40
    cfg.synthetic.num_eval_examples = 16
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ----------------------------------------------------------------------------- config


def test_default_config_is_complete_and_checked():
    for kind in ("sft", "preference"):
        cfg = default_data_config(kind)
        check_data_config(cfg)
        assert cfg.kind == kind and cfg.source == "synthetic"
    cfg = default_data_config("sft")
    cfg.truncation = "middle"
    with pytest.raises(ValueError, match="truncation"):
        check_data_config(cfg)
    cfg = default_data_config("preference")
    cfg.packing = True
    with pytest.raises(ValueError, match="packing"):
        check_data_config(cfg)
    with pytest.raises(ValueError, match="kind"):
        default_data_config("rl")


# -------------------------------------------------------------------------- synthetic


def test_synthetic_rows_are_deterministic_sorted_and_disjoint():
    kw = dict(seed=3, num_examples=50, num_eval_examples=20, min_items=3, max_items=5, max_value=9)
    train = synthetic.synthetic_rows("train", **kw)
    assert train == synthetic.synthetic_rows("train", **kw)
    assert train != synthetic.synthetic_rows("train", **dict(kw, seed=4))
    held = synthetic.synthetic_rows("test", **kw)
    assert len(train) == 50 and len(held) == 20
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    for r in train + held:
        assert synthetic.is_sorted_answer(r["prompt"], r["chosen"])
        assert not synthetic.is_sorted_answer(r["prompt"], r["rejected"])
        assert sorted(r["rejected"].split()) == sorted(r["chosen"].split())
        assert r["completion"] == r["chosen"]


def test_synthetic_golden_rows():
    # Reproductions and tiny configs depend on these exact rows. If this fails after an
    # intentional change to synthetic.py, update the values here and say so in the change note
    # (results recorded with the old data are then no longer comparable).
    c = default_data_config("sft").synthetic
    kw = dict(
        seed=c.seed,
        num_examples=c.num_examples,
        num_eval_examples=c.num_eval_examples,
        min_items=c.min_items,
        max_items=c.max_items,
        max_value=c.max_value,
    )
    assert synthetic.synthetic_rows("train", **kw)[:2] == [
        {
            "prompt": "sort: 6 5 2 3 0 0\n",
            "chosen": "0 0 2 3 5 6",
            "rejected": "0 2 0 3 5 6",
            "completion": "0 0 2 3 5 6",
        },
        {"prompt": "sort: 8 6 9\n", "chosen": "6 8 9", "rejected": "6 9 8", "completion": "6 8 9"},
    ]
    assert synthetic.synthetic_rows("test", **kw)[0]["prompt"] == "sort: 8 9 5 3 8\n"


# ------------------------------------------------------------------------- formatting


def test_plain_prompt_response_tokens(tok):
    ids, loss, plen = formatting.encode_prompt_response(
        tok, "sort: 3 1\n", "1 3", chat_template=False
    )
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids[1:plen]) == "sort: 3 1\n"
    assert tok.decode(ids[plen:-1]) == "1 3"
    # loss covers exactly the response and its EOS
    np.testing.assert_array_equal(loss, (np.arange(len(ids)) >= plen).astype(np.int32))


def test_transcript_reproduces_hh_text(tok):
    prompt = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "bye?"},
    ]
    ids, loss, plen = formatting.encode_prompt_response(
        tok, prompt, [{"role": "assistant", "content": "bye"}], chat_template=False
    )
    assert tok.decode(ids[1:plen]) == "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: bye?\n\nAssistant:"
    assert tok.decode(ids[plen:]) == " bye<eos>"
    assert loss[plen:].all() and not loss[:plen].any()


def test_chat_template_single_and_multi_turn(tok):
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "ok"},
    ]
    pieces = formatting.conversation_segments(tok, msgs, chat_template=True)
    ids, loss = formatting.encode_pieces(tok, pieces)
    full = tok.apply_chat_template(msgs)
    # The tiny template starts with <bos> itself: no second BOS; the trailing "\n" after the
    # last <eos> is never predicted and is left out.
    assert tok.decode(ids) == full[:-1]
    assert list(ids).count(tok.bos_id) == 1
    trained = tok.decode(ids[loss == 1])
    assert trained == "yo<eos>ok<eos>"


def test_qwen3_chat_template_masks_only_the_answer(qwen3_tokenizer_dir):
    q = Tokenizer.from_pretrained(qwen3_tokenizer_dir)
    ids, loss, plen = formatting.encode_prompt_response(q, "2+2?", "4", chat_template=True)
    assert q.bos_id is None and ids[-1] == q.eos_id  # <|im_end|> is Qwen's EOS
    assert q.decode(ids[:plen]) == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert q.decode(ids[plen:]) == "<think>\n\n</think>\n\n4<|im_end|>"
    assert loss.sum() == len(ids) - plen


def test_truncation_modes(tok):
    ids = np.arange(10, 20, dtype=np.int32)  # prompt 10..15 (6 tokens), response 16..19
    ids[0] = tok.bos_id
    loss = (np.arange(10) >= 6).astype(np.int32)
    kw = dict(bos_id=tok.bos_id, truncation="truncate_response")
    out, l = formatting.truncate(
        ids, loss, 6, max_prompt_len=4, max_len=8, prompt_truncation="keep_end", **kw
    )
    assert list(out) == [tok.bos_id, 13, 14, 15, 16, 17, 18, 19]  # BOS survives keep_end
    assert list(l) == [0, 0, 0, 0, 1, 1, 1, 1]
    out, _ = formatting.truncate(
        ids, loss, 6, max_prompt_len=4, max_len=6, prompt_truncation="keep_start", **kw
    )
    assert list(out) == [tok.bos_id, 11, 12, 13, 16, 17]
    assert (
        formatting.truncate(
            ids,
            loss,
            6,
            max_prompt_len=4,
            max_len=6,
            prompt_truncation="keep_start",
            bos_id=tok.bos_id,
            truncation="drop",
        )
        == "too_long"
    )
    # a prompt allowed to fill max_len leaves no response token: a bad row
    assert (
        formatting.truncate(
            ids, loss, 6, max_prompt_len=6, max_len=6, prompt_truncation="keep_end", **kw
        )
        == "no_response_tokens"
    )


def test_drop_mode_counts_rows_even_when_raising(tok):
    cfg = small_cfg("sft", max_len=18, max_prompt_len=10, truncation="drop")
    examples, report = load_examples(cfg, tok, kind="sft", split="train")
    assert report["rows_read"] == 40
    assert report["skipped_by_reason"]["too_long"] == 40 - len(examples) > 0
    assert report["rows_kept"] == len(examples)
    assert all(len(e["ids"]) <= 18 for e in examples)
    # kept rows whose prompt was cut are counted; "drop" never cuts a response
    n_long_prompts = sum(
        len(r["prompt"]) + 1 > 10
        for r in synthetic.synthetic_rows(
            "train",
            seed=0,
            num_examples=40,
            num_eval_examples=16,
            min_items=3,
            max_items=6,
            max_value=9,
        )
    )
    assert 0 < report["truncated"]["prompt"] <= n_long_prompts
    assert report["truncated"]["response"] == 0
    cfg.truncation = "truncate_response"
    examples, report = load_examples(cfg, tok, kind="sft", split="train")
    assert len(examples) == 40 and report["truncated"]["response"] > 0


def test_no_response_token_is_a_bad_row(tok):
    cfg = small_cfg("preference", max_len=10, max_prompt_len=10)
    with pytest.raises(BadRowError, match=r"no_response_tokens.*synthetic:train, row 0"):
        load_examples(cfg, tok, kind="preference", split="train")
    cfg.on_bad_row = "skip"
    with pytest.raises(ValueError, match="no usable rows"):
        load_examples(cfg, tok, kind="preference", split="train")


# ---------------------------------------------------------------------------- packing


def test_first_fit_bins_is_a_partition_within_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 11, size=200)
    order = rng.permutation(200)
    bins = packing.first_fit_bins(lengths, order, max_len=16, open_bins=4)
    flat = [i for b in bins for i in b]
    assert sorted(flat) == list(range(200))
    assert all(lengths[b].sum() <= 16 for b in map(np.array, bins))
    pos = {i: k for k, i in enumerate(order)}
    assert all([pos[i] for i in b] == sorted(pos[i] for i in b) for b in bins)
    # more open bins never needs more rows here, and beats one example per row by far
    assert len(bins) <= len(packing.first_fit_bins(lengths, order, max_len=16, open_bins=1))
    assert len(bins) < 0.6 * 200


def test_packed_row_matches_separate_rows(tok):
    a = (np.array([1, 5, 6, 7], np.int32), np.array([0, 0, 1, 1], np.int32))
    b = (np.array([1, 8, 9], np.int32), np.array([0, 1, 1], np.int32))
    row = packing.pack_row([a, b], max_len=9, pad_id=tok.pad_id)
    np.testing.assert_array_equal(row["input_ids"], [1, 5, 6, 7, 1, 8, 9, 0, 0])
    np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 1, 2, 2, 2, 0, 0])
    np.testing.assert_array_equal(row["positions"], [0, 1, 2, 3, 0, 1, 2, 0, 0])
    np.testing.assert_array_equal(row["loss_mask"], [0, 0, 1, 1, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(row["attention_mask"], [1] * 7 + [0, 0])
    # each segment, cut out of the packed row, is the example padded on its own
    for seg, (ids, loss) in enumerate([a, b], start=1):
        single = packing.pad_sft_row(ids, loss, max_len=9, pad_id=tok.pad_id)
        sel = row["segment_ids"] == seg
        n = sel.sum()
        for k in ("input_ids", "loss_mask", "positions"):
            np.testing.assert_array_equal(row[k][sel], single[k][:n], err_msg=k)


def test_packed_stream_covers_every_example_once_per_epoch(tok):
    cfg = small_cfg("sft", packing=True, max_len=48, max_prompt_len=24)
    examples, _ = load_examples(cfg, tok, kind="sft", split="train")
    it = make_iterator(cfg, tok, kind="sft", split="train", global_batch_size=2, seed=5)
    want = sorted(tuple(e["ids"]) for e in examples)
    got = []
    while len(got) < len(examples):
        batch = next(it)
        for r in range(2):
            for seg in range(1, batch["segment_ids"][r].max() + 1):
                got.append(tuple(batch["input_ids"][r][batch["segment_ids"][r] == seg]))
    # the first epoch ends exactly at a row boundary or the next epoch starts mid-batch
    assert sorted(got[: len(examples)]) == want
    assert batch["input_ids"].shape == (2, 48)


# --------------------------------------------------------------------------- iterator


@pytest.mark.parametrize("kind,packed", [("sft", False), ("sft", True), ("preference", False)])
def test_batches_follow_the_contract(tok, kind, packed):
    cfg = small_cfg(kind, packing=packed)
    it = make_iterator(cfg, tok, kind=kind, split="train", global_batch_size=4, seed=0)
    batch = next(it)
    assert set(batch) == (SFT_KEYS if kind == "sft" else PREF_KEYS)
    for k, v in batch.items():
        assert v.shape == (4, cfg.max_len) and v.dtype == np.int32, k
    for p in ("",) if kind == "sft" else ("chosen_", "rejected_"):
        ids, am, lm = batch[p + "input_ids"], batch[p + "attention_mask"], batch[p + "loss_mask"]
        assert (ids[am == 0] == tok.pad_id).all()
        assert (lm <= am).all() and (lm.sum(1) > 0).all()
        # right padding: the mask is a prefix of ones
        n = am.sum(1)
        np.testing.assert_array_equal(am, (np.arange(cfg.max_len)[None] < n[:, None]))
        if not packed:
            # every sequence ends with a trained EOS
            assert (ids[np.arange(4), n - 1] == tok.eos_id).all()
            assert (lm[np.arange(4), n - 1] == 1).all()
    if kind == "sft" and not packed:
        np.testing.assert_array_equal(batch["segment_ids"], batch["attention_mask"])
    if kind == "preference":
        text = tok.decode(batch["chosen_input_ids"][0][batch["chosen_loss_mask"][0] == 1])
        prompt = tok.decode(
            batch["chosen_input_ids"][0][
                (batch["chosen_loss_mask"][0] == 0) & (batch["chosen_attention_mask"][0] == 1)
            ]
        )
        assert synthetic.is_sorted_answer(prompt.removeprefix("<bos>"), text.removesuffix("<eos>"))


@pytest.mark.parametrize("kind,packed", [("sft", False), ("sft", True), ("preference", False)])
def test_resume_is_exact_across_epochs(tok, kind, packed):
    cfg = small_cfg(kind, packing=packed)
    kw = dict(kind=kind, split="train", global_batch_size=6, seed=1)
    # 40 examples / 6 per batch: 20 batches cross several epoch boundaries mid-batch
    reference = take(make_iterator(cfg, tok, **kw), 20)
    it = make_iterator(cfg, tok, **kw)
    take(it, 7)
    state = json.loads(json.dumps(it.get_state()))  # JSON-able
    resumed = make_iterator(cfg, tok, **kw)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 13), reference[7:])


def test_epochs_reshuffle_deterministically(tok):
    cfg = small_cfg("sft")
    kw = dict(kind="sft", split="train", global_batch_size=8)
    a = take(make_iterator(cfg, tok, seed=2, **kw), 10)
    assert_batches_equal(a, take(make_iterator(cfg, tok, seed=2, **kw), 10))
    b = take(make_iterator(cfg, tok, seed=3, **kw), 10)
    assert any((x["input_ids"] != y["input_ids"]).any() for x, y in zip(a, b))
    epoch = lambda bs: sorted(tuple(r) for x in bs for r in x["input_ids"])
    assert epoch(a[:5]) == epoch(a[5:10])  # 40 rows = one epoch, same multiset
    assert [tuple(r) for x in a[:5] for r in x["input_ids"]] != [
        tuple(r) for x in a[5:] for r in x["input_ids"]
    ]  # in a new order
    cfg.shuffle = False
    c = take(make_iterator(cfg, tok, seed=2, **kw), 10)
    assert_batches_equal(c[:5], c[5:])


@pytest.mark.parametrize("packed", [False, True])
def test_host_shards_concatenate_to_the_single_host_batch(tok, packed):
    cfg = small_cfg("sft", packing=packed)
    kw = dict(kind="sft", split="train", global_batch_size=8, seed=4)
    single = take(make_iterator(cfg, tok, **kw), 6)
    hosts = [
        take(make_iterator(cfg, tok, process_index=p, process_count=4, **kw), 6) for p in range(4)
    ]
    for step in range(6):
        for k in SFT_KEYS:
            assert hosts[0][step][k].shape == (2, cfg.max_len)
            np.testing.assert_array_equal(
                np.concatenate([h[step][k] for h in hosts]), single[step][k]
            )
    # the position is the global step: a 4-host state resumes a 1-host run
    it = make_iterator(cfg, tok, process_index=1, process_count=4, **kw)
    take(it, 3)
    one = make_iterator(cfg, tok, **kw)
    one.set_state(it.get_state())
    assert_batches_equal(take(one, 3), single[3:6])


def test_state_from_another_config_is_refused(tok):
    it = make_iterator(
        small_cfg("sft"), tok, kind="sft", split="train", global_batch_size=4, seed=0
    )
    other = make_iterator(
        small_cfg("sft"), tok, kind="sft", split="train", global_batch_size=4, seed=1
    )
    with pytest.raises(ValueError, match="different data config"):
        other.set_state(it.get_state())
    with pytest.raises(ValueError, match="not a data iterator state"):
        it.set_state({"next_index": 3})


def test_bad_arguments_are_named(tok):
    cfg = small_cfg("sft")
    with pytest.raises(ValueError, match="multiple of process_count"):
        make_iterator(
            cfg, tok, kind="sft", split="train", global_batch_size=6, seed=0, process_count=4
        )
    with pytest.raises(ValueError, match="data.kind"):
        make_iterator(cfg, tok, kind="preference", split="train", global_batch_size=4, seed=0)


def test_eval_split_is_held_out(tok):
    cfg = small_cfg("preference")
    train, _ = load_examples(cfg, tok, kind="preference", split="train")
    held, report = load_examples(cfg, tok, kind="preference", split="eval")
    assert len(held) == 16 and report["rows_read"] == 16
    assert not {tuple(e["chosen_ids"]) for e in train} & {tuple(e["chosen_ids"]) for e in held}


# -------------------------------------------------------------------- jsonl / parquet


def test_jsonl_and_parquet_sources_agree(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"q": f"question {i}", "good": f"answer {i}", "bad": f"wrong {i}"} for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    got = {}
    for source, name in (("jsonl", "train.jsonl"), ("parquet", "train.parquet")):
        cfg = small_cfg("preference", source=source, shuffle=False)
        cfg.files.train = str(tmp_path / name)
        cfg.fields.update(prompt="q", chosen="good", rejected="bad")
        got[source] = take(
            make_iterator(cfg, tok, kind="preference", split="train", global_batch_size=4, seed=0),
            2,
        )
    assert_batches_equal(got["jsonl"], got["parquet"])
    first = got["jsonl"][0]
    assert (
        tok.decode(first["rejected_input_ids"][0][first["rejected_loss_mask"][0] == 1])
        == "wrong 0<eos>"
    )


def test_conversational_sft_with_chat_template(tok, tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"hi {i}"},
                {"role": "assistant", "content": f"hello {i}"},
            ]
        }
        for i in range(4)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = small_cfg("sft", source="jsonl", chat_template=True, shuffle=False)
    cfg.files.train = str(tmp_path / "train.jsonl")
    batch = next(make_iterator(cfg, tok, kind="sft", split="train", global_batch_size=4, seed=0))
    for i in range(4):
        ids, lm = batch["input_ids"][i], batch["loss_mask"][i]
        assert tok.decode(ids[lm == 1]) == f"hello {i}<eos>"
        assert (
            tok.decode(ids[batch["attention_mask"][i] == 1])
            == tok.apply_chat_template(rows[i]["messages"])[:-1]
        )


def test_bad_row_report_counts_and_raises():
    r = BadRowReport("skip")
    r.bad(reason="empty_chosen", source="f.jsonl", row=3, field="chosen")
    r.bad(reason="empty_chosen", source="f.jsonl", row=5, field="chosen")
    assert r.as_dict()["skipped_by_reason"] == {"empty_chosen": 2}
    assert "f.jsonl, row 3, field 'chosen'" in r.as_dict()["examples"]["empty_chosen"][0]
    with pytest.raises(BadRowError, match="f.jsonl, row 7, field 'x'"):
        BadRowReport("raise").bad(reason="non_string", source="f.jsonl", row=7, field="x")
