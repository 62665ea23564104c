"""The loader: records -> token examples (once, with a bad-row report) -> a grain MapDataset of
rows -> this host's slice of every global batch, with an exactly resumable iterator.

Order of operations (each a pure function of the config, the split and the seed):

  examples --shuffle per epoch (grain index shuffle, reseeded each epoch)--> repeat forever
           --pad, or first-fit pack per epoch--> rows --batch(global_batch // process_count)-->
           [process_index::process_count]

so global batch k is rows [k*G, (k+1)*G) of one stream whatever the number of hosts, host p
holds rows [k*G + p*b, k*G + (p+1)*b), and the resume state is just k: a state saved with one
process count resumes under another as long as the global batch size is the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
from typing import Any, Iterator

import grain
import numpy as np

from alignment.data import records as records_lib
from alignment.data.config import check_data_config
from alignment.data.formatting import tokenize_record
from alignment.data.packing import first_fit_bins, pack_row, pad_preference_row, pad_sft_row
from alignment.data.synthetic import synthetic_rows
from alignment.data.task_pairs import task_rows

_STATE_FORMAT = "alignment.data.iterator/1"


def _source_split(cfg, split: str) -> str:
    return cfg.splits[split] if split in cfg.splits else split


def load_records(
    cfg, *, kind: str, split: str, report: records_lib.BadRowReport
) -> list[tuple[str, Any, dict]]:
    """(source, row, record) for every valid row of the split, from whichever source."""
    src_split = _source_split(cfg, split)
    fields = dict(cfg.fields)
    out = []
    if cfg.source == "synthetic":
        s = cfg.synthetic
        rows = synthetic_rows(
            src_split,
            seed=s.seed,
            num_examples=s.num_examples,
            num_eval_examples=s.num_eval_examples,
            min_items=s.min_items,
            max_items=s.max_items,
            max_value=s.max_value,
        )
        name = f"synthetic:{src_split}"
        synth_fields = {
            "prompt": "prompt",
            "chosen": "chosen",
            "rejected": "rejected",
            "completion": "completion",
            "messages": "messages",
        }
        for i, row in enumerate(rows):
            report.rows_read += 1
            rec = records_lib.normalize(
                row, kind=kind, fields=synth_fields, fmt="plain", report=report, source=name, row=i
            )
            if rec is not None:
                out.append((name, i, rec))
            if cfg.max_rows and report.rows_read >= cfg.max_rows:
                break
    elif cfg.source == "task":
        t = cfg.task_source
        rows = task_rows(
            t.name,
            kind=kind,
            split=src_split,
            seed=t.seed,
            label_temperature=t.label_temperature,
            n=t.num_examples if src_split == "train" else t.num_eval_examples,
        )
        name = f"task:{t.name}:{src_split}"
        for i, row in enumerate(rows):
            report.rows_read += 1
            rec = records_lib.normalize(
                row,
                kind=kind,
                fields={k: k for k in cfg.fields.keys()},
                fmt="plain",
                report=report,
                source=name,
                row=i,
            )
            if rec is not None:
                out.append((name, i, rec))
            if cfg.max_rows and report.rows_read >= cfg.max_rows:
                break
    elif cfg.source in ("jsonl", "parquet"):
        if src_split not in cfg.files or not cfg.files[src_split]:
            raise ValueError(
                f"data.files has no file pattern for split {src_split!r} "
                f"(have {sorted(cfg.files.keys())})"
            )
        files = records_lib.expand_files(cfg.files[src_split], what=f"data.files.{src_split}")
        for path in files:
            for row, obj in records_lib.read_rows(path, report):
                rec = records_lib.normalize(
                    obj,
                    kind=kind,
                    fields=fields,
                    fmt=cfg.format,
                    report=report,
                    source=path,
                    row=row,
                )
                if rec is not None:
                    out.append((path, row, rec))
                if cfg.max_rows and report.rows_read >= cfg.max_rows:
                    return out
    else:  # tfds
        from alignment.data import builders  # optional heavy dependency: tensorflow_datasets, 2 s

        out = builders.load_tfds_records(cfg, kind=kind, split=src_split, report=report)
    return out


def load_examples(cfg, tokenizer, *, kind: str, split: str) -> tuple[list[dict], dict]:
    """Tokenised examples of a split and the bad-row report (also logged)."""
    check_data_config(cfg)
    if kind != cfg.kind:
        raise ValueError(f"make_iterator(kind={kind!r}) but data.kind={cfg.kind!r}")
    report = records_lib.BadRowReport(cfg.on_bad_row)
    examples = []
    for source, row, rec in load_records(cfg, kind=kind, split=split, report=report):
        ex = tokenize_record(
            rec, tokenizer, kind=kind, cfg=cfg, report=report, source=source, row=row
        )
        if ex is not None:
            examples.append(ex)
    report.rows_kept = len(examples)
    name = f"data[{cfg.source}:{cfg.builder or ''}:{split}]"
    report.log(name)
    if not examples:
        raise ValueError(f"{name}: no usable rows ({report.summary(name)})")
    return examples, report.as_dict()


class _PackedEpochs:
    """Sequence of packed SFT rows over endless epochs: epoch e visits the examples in a
    permutation seeded by (seed, e) and packs them first-fit. Rows per epoch vary, so the
    cumulative row counts are extended lazily (each epoch's packing is recomputed on demand)."""

    def __init__(
        self, examples, *, seed: int, shuffle: bool, max_len: int, open_bins: int, pad_id: int
    ):
        self._ex = examples
        self._lengths = np.array([len(e["ids"]) for e in examples])
        self._seed, self._shuffle = seed, shuffle
        self._max_len, self._open_bins, self._pad_id = max_len, open_bins, pad_id
        self._starts = [0]  # row index where epoch e starts
        self._cache: dict[int, list[list[int]]] = {}
        self._lock = threading.Lock()

    def _bins(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            n = len(self._ex)
            order = (
                np.random.default_rng([self._seed, epoch]).permutation(n)
                if self._shuffle
                else np.arange(n)
            )
            if len(self._cache) >= 4:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = first_fit_bins(
                self._lengths, order, max_len=self._max_len, open_bins=self._open_bins
            )
        return self._cache[epoch]

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        with self._lock:
            while self._starts[-1] <= i:
                self._starts.append(self._starts[-1] + len(self._bins(len(self._starts) - 1)))
            epoch = int(np.searchsorted(self._starts, i, side="right")) - 1
            members = self._bins(epoch)[i - self._starts[epoch]]
        return pack_row(
            [(self._ex[j]["ids"], self._ex[j]["loss"]) for j in members],
            max_len=self._max_len,
            pad_id=self._pad_id,
        )


def build_dataset(
    examples: list[dict],
    cfg,
    *,
    kind: str,
    seed: int,
    pad_id: int,
    host_batch_size: int,
    process_index: int,
    process_count: int,
) -> grain.MapDataset:
    """The endless MapDataset of this host's batches (see the module docstring)."""
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if kind == "sft" and cfg.packing:
        rows = grain.MapDataset.source(
            _PackedEpochs(
                examples,
                seed=seed,
                shuffle=cfg.shuffle,
                max_len=cfg.max_len,
                open_bins=cfg.packing_open_bins,
                pad_id=pad_id,
            )
        )
    else:
        rows = grain.MapDataset.source(examples)
        if cfg.shuffle:
            rows = rows.shuffle(seed=seed)
        rows = rows.repeat(None)
        if kind == "sft":
            rows = rows.map(
                lambda e: pad_sft_row(e["ids"], e["loss"], max_len=cfg.max_len, pad_id=pad_id)
            )
        else:
            rows = rows.map(lambda e: pad_preference_row(e, max_len=cfg.max_len, pad_id=pad_id))
    return rows.batch(host_batch_size, drop_remainder=True)[process_index::process_count]


class DataIterator:
    """Iterator of batch dicts with a JSON-able, exactly resumable position.

    `report` holds the bad-row summary of preprocessing; `num_examples` the usable rows.
    """

    def __init__(
        self,
        dataset: grain.MapDataset,
        *,
        fingerprint: str,
        report: dict,
        num_examples: int,
        prefetch: int,
    ):
        self._dataset = dataset
        read = grain.ReadOptions(num_threads=min(prefetch, 1), prefetch_buffer_size=prefetch)
        self._iter = iter(dataset.to_iter_dataset(read))
        self._fingerprint = fingerprint
        self.report = report
        self.num_examples = num_examples

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def get_state(self) -> dict[str, Any]:
        return {
            "format": _STATE_FORMAT,
            "fingerprint": self._fingerprint,
            "grain": self._iter.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"not a data iterator state (expected format {_STATE_FORMAT!r}): {str(state)[:200]}"
            )
        if state["fingerprint"] != self._fingerprint:
            raise ValueError(
                "data iterator state was saved for a different data config, split, seed, global "
                "batch size or dataset contents; resuming would not reproduce the batch order. "
                f"saved fingerprint {state['fingerprint']}, this iterator {self._fingerprint}"
            )
        self._iter.set_state(state["grain"])


def _fingerprint(cfg, *, kind, split, seed, global_batch_size, examples) -> str:
    h = hashlib.sha256()
    # Paths may move between runs; what decides the batches is the rest plus the contents.
    order_cfg = {
        k: v for k, v in cfg.to_dict().items() if k not in ("manual_dir", "data_dir", "files")
    }
    h.update(
        json.dumps(
            {
                "cfg": order_cfg,
                "kind": kind,
                "split": split,
                "seed": seed,
                "global_batch_size": global_batch_size,
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    for e in examples:
        for k in sorted(e):
            h.update(e[k].tobytes())
    return h.hexdigest()[:16]


def make_iterator(
    data_cfg,
    tokenizer,
    *,
    kind: str,
    split: str,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 4,
) -> DataIterator:
    """Endless iterator of this host's batches (`global_batch_size // process_count` rows).

    SFT batches: input_ids, attention_mask, loss_mask, segment_ids, positions; preference:
    chosen_/rejected_ input_ids, attention_mask, loss_mask; all int32 [B, max_len], right-padded
    with tokenizer.pad_id. `seed` orders the rows (the trainer passes data.seed); epochs repeat
    with a fresh, deterministic order each. `.get_state()`/`.set_state()` resume exactly.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index}, {process_count}"
        )
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count}"
        )
    if tokenizer.pad_id is None:
        raise ValueError("the tokenizer has no pad token; batches are padded with tokenizer.pad_id")
    examples, report = load_examples(data_cfg, tokenizer, kind=kind, split=split)
    dataset = build_dataset(
        examples,
        data_cfg,
        kind=kind,
        seed=seed,
        pad_id=tokenizer.pad_id,
        host_batch_size=global_batch_size // process_count,
        process_index=process_index,
        process_count=process_count,
    )
    fp = _fingerprint(
        data_cfg,
        kind=kind,
        split=split,
        seed=seed,
        global_batch_size=global_batch_size,
        examples=examples,
    )
    logging.info(
        "data[%s]: %d examples, %d rows per host batch",
        split,
        len(examples),
        global_batch_size // process_count,
    )
    return DataIterator(
        dataset, fingerprint=fp, report=report, num_examples=len(examples), prefetch=prefetch
    )
