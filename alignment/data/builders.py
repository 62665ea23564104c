"""TFDS builders (ArrayRecord, no TensorFlow needed) that prepare datasets from local files.

Each builder reads the original release files from a manual dir, validates every row with the
same checks as the JSONL/Parquet path (`alignment.data.records`), and writes normalised records:
every feature is a Text holding JSON (a string for plain text, a list of {"role", "content"}
messages for conversations). Rows rejected with `on_bad_row="skip"` are counted by reason in
the dataset's metadata (`metadata.json`, key "bad_rows"), logged at the end of preparation and
merged into the report of `make_iterator`.

  builder                      manual dir holds                                kind
  alignment_hh_rlhf            Anthropic HH-RLHF **/{train,test}.jsonl.gz        preference
  alignment_ultrafeedback      UltraFeedback-binarized {train,test}_prefs*       preference
                               (.parquet or .jsonl)
  alignment_tldr               summarize_from_feedback comparisons/*.json        preference
                               (jsonl; CNN/DM batches "*cnndm*" are not TL;DR)
  alignment_gsm8k              GSM8K {train,test}.jsonl (question, answer)       sft
  alignment_generic            any {split}*.jsonl[.gz] / *.parquet, with         either
                               configurable field names (GenericConfig)

Prepare once, then read back TF-free with `tfds.data_source(name, data_dir=...)` or
`tfds.builder_from_directory`:

  b = tfds.builder("alignment_hh_rlhf", data_dir=DATA, on_bad_row="skip")
  b.download_and_prepare(file_format="array_record",
                         download_config=tfds.download.DownloadConfig(manual_dir=MANUAL))

TF-free: `tensorflow_datasets` 4.9.10 writes and reads ArrayRecord with numpy alone. Two
things needed care: builders here build their `DatasetInfo` directly (not
`dataset_info_from_configs`, which reads package metadata files next to the builder module),
and override `code_path` (tfds' default touches `importlib_resources`, absent here).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import inspect
import json
import os
import re
from typing import Any, Iterator, Mapping

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from alignment.data import records as records_lib

_VERSION = tfds.core.Version("1.0.0")


def _find(manual_dir: str, patterns: str) -> list[str]:
    """Comma-separated globs relative to manual_dir, searched recursively; sorted, deduped."""
    files = set()
    for pat in [p.strip() for p in patterns.split(",") if p.strip()]:
        files.update(glob.glob(os.path.join(manual_dir, "**", pat), recursive=True))
    return sorted(files)


class _ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery: manual-dir files per split -> validated records -> Text(JSON) features."""

    VERSION = _VERSION
    KIND = "preference"
    FIELDS: tuple[str, ...] = ("prompt", "chosen", "rejected")
    SPLIT_FILES: Mapping[str, str] = {}

    # TF-free: tfds' default `code_path` checks `importlib_resources.abc.Traversable`, a
    # package tfds declares but this venv lacks (and we need no packaged resources): the
    # builder's code is simply this file.
    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, on_bad_row: str = "raise", **kwargs):
        if on_bad_row not in ("raise", "skip"):
            raise ValueError(
                f"{self.name}: on_bad_row must be 'raise' or 'skip', got {on_bad_row!r}"
            )
        self._on_bad_row = on_bad_row
        super().__init__(**kwargs)

    @property
    def kind(self) -> str:
        return self.KIND

    def _features(self) -> tuple[str, ...]:
        return self.FIELDS

    def _split_files(self) -> Mapping[str, str]:
        return self.SPLIT_FILES

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip().split("\n")[0],
            features=tfds.features.FeaturesDict(
                {f: tfds.features.Text() for f in self._features()}
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        splits = {}
        for split, patterns in self._split_files().items():
            files = _find(manual_dir, patterns)
            if files:
                splits[split] = self._generate_examples(files=files, split=split)
        if not splits:
            raise FileNotFoundError(
                f"{self.name}: no input files in manual dir {manual_dir}. "
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        return splits

    def _rows(
        self, files: list[str], split: str, report: records_lib.BadRowReport
    ) -> Iterator[tuple[str, Any, dict]]:
        for path in files:
            for row, obj in records_lib.read_rows(path, report):
                yield path, row, obj

    def _record(self, obj: Mapping, ck: records_lib.RowChecker, split: str) -> dict | None:
        """Raw row -> record (dict over self.FIELDS); None = the row belongs to another split."""
        raise NotImplementedError

    def _generate_examples(self, files: list[str], split: str):
        report = records_lib.BadRowReport(self._on_bad_row)
        for path, row, obj in self._rows(files, split, report):
            ck = records_lib.RowChecker(report, path, row)
            try:
                rec = self._record(obj, ck, split)
            except records_lib._Skip:  # pylint: disable=protected-access
                continue
            if rec is None:
                report.rows_read -= 1  # another split's row, counted there
                continue
            report.rows_kept += 1
            yield (
                f"{os.path.basename(path)}:{row}",
                {f: json.dumps(rec.get(f), ensure_ascii=False) for f in self._features()},
            )
        bad = dict(self.info.metadata.get("bad_rows", {}))
        bad[split] = report.as_dict()
        self.info.metadata["bad_rows"] = bad
        report.log(f"{self.name}[{split}]")


# ------------------------------------------------------------------------------ HH-RLHF

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str, ck: records_lib.RowChecker, field: str) -> list[dict[str, str]]:
    """ "\\n\\nHuman: q\\n\\nAssistant: a ..." -> messages (the one space after the colon is
    part of the format, not the content)."""
    ck.text(text, field)
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        ck.fail(
            "bad_message",
            field,
            "not an HH transcript (must start with '\\n\\nHuman:' and alternate turns)",
        )
    msgs = []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append(
            {
                "role": "user" if role == "Human" else "assistant",
                "content": content[1:] if content.startswith(" ") else content,
            }
        )
    if msgs[-1]["role"] != "assistant":
        ck.fail("no_assistant_turn", field, "the transcript does not end with an Assistant turn")
    return msgs


class AlignmentHhRlhf(_ManualBuilder):
    """Anthropic HH-RLHF preference pairs, the shared prompt split off the transcripts."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the release files of github.com/anthropics/hh-rlhf (e.g. helpful-base/train.jsonl.gz, "
        "helpful-base/test.jsonl.gz, harmless-base/...) anywhere under the manual dir; every "
        "train*.jsonl[.gz] / test*.jsonl[.gz] found recursively is used."
    )
    SPLIT_FILES = {"train": "train*.jsonl.gz,train*.jsonl", "test": "test*.jsonl.gz,test*.jsonl"}

    def _record(self, obj, ck, split):
        chosen = parse_hh_transcript(ck.get(obj, "chosen"), ck, "chosen")
        rejected = parse_hh_transcript(ck.get(obj, "rejected"), ck, "rejected")
        if chosen[:-1] != rejected[:-1]:
            ck.fail(
                "prompt_mismatch", "rejected", "chosen and rejected differ before the last turn"
            )
        rec = {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
        return records_lib.normalize_preference(rec, fields=_IDENTITY, fmt="conversational", ck=ck)


_IDENTITY = {
    "prompt": "prompt",
    "chosen": "chosen",
    "rejected": "rejected",
    "completion": "completion",
    "messages": "messages",
}


# ------------------------------------------------------------------------- UltraFeedback


class AlignmentUltrafeedback(_ManualBuilder):
    """UltraFeedback-binarized (HuggingFaceH4): prompt + chosen/rejected message lists."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the files of HuggingFaceH4/ultrafeedback_binarized (data/train_prefs-*.parquet and "
        "data/test_prefs-*.parquet, or the same rows as train_prefs*.jsonl / test_prefs*.jsonl) "
        "under the manual dir."
    )
    SPLIT_FILES = {
        "train": "train_prefs*.parquet,train_prefs*.jsonl*",
        "test": "test_prefs*.parquet,test_prefs*.jsonl*",
    }

    def _record(self, obj, ck, split):
        return records_lib.normalize_preference(obj, fields=_IDENTITY, fmt="conversational", ck=ck)


# --------------------------------------------------------------------------------- TL;DR

TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
_TLDR_SPLITS = {"train": "train", "valid1": "validation", "valid2": "validation", "test": "test"}


class AlignmentTldr(_ManualBuilder):
    """OpenAI summarize_from_feedback comparisons (Reddit TL;DR): post -> preferred summary."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the comparison files of openai/summarize-from-feedback (comparisons/batch*.json, "
        "one JSON object per line) under the manual dir. Files named *cnndm* (news articles, "
        "not TL;DR posts) are left out. Rows go to train/validation/test by their 'split' field "
        "(valid1 and valid2 -> validation)."
    )
    SPLIT_FILES = {
        "train": "*.json,*.jsonl",
        "validation": "*.json,*.jsonl",
        "test": "*.json,*.jsonl",
    }

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        files = [
            f for f in _find(manual_dir, "*.json,*.jsonl") if "cnndm" not in os.path.basename(f)
        ]
        if not files:
            raise FileNotFoundError(
                f"{self.name}: no comparison files in manual dir {manual_dir}. "
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        # Which splits exist is only known from the rows' 'split' field.
        present = set()
        for path in files:
            for _, obj in records_lib.read_rows(path, records_lib.BadRowReport("skip")):
                present.add(_TLDR_SPLITS.get(obj.get("split"), "train"))
        return {
            s: self._generate_examples(files=files, split=s)
            for s in ("train", "validation", "test")
            if s in present
        }

    def _record(self, obj, ck, split):
        raw_split = ck.get(obj, "split")
        if raw_split not in _TLDR_SPLITS:
            if split != "train":  # count the bad row once, in the train pass
                return None
            ck.fail(
                "missing_field",
                "split",
                f"unknown split {raw_split!r} (expected one of {sorted(_TLDR_SPLITS)})",
            )
        if _TLDR_SPLITS[raw_split] != split:
            return None
        info = {
            k: ck.text(ck.get(obj, f"info.{k}"), f"info.{k}")
            for k in ("subreddit", "title", "post")
        }
        choice = ck.get(obj, "choice")
        if choice not in (0, 1) or isinstance(choice, bool):
            ck.fail("missing_field", "choice", f"must be 0 or 1, got {choice!r}")
        texts = [
            ck.text(
                ck.get(obj, f"summaries.{i}.text"),
                f"summaries.{i}.text",
                empty_reason="empty_chosen" if i == choice else "empty_rejected",
            )
            for i in (0, 1)
        ]
        rec = {
            "prompt": TLDR_PROMPT.format(**{k: v.strip() for k, v in info.items()}),
            "chosen": " " + texts[choice].strip(),
            "rejected": " " + texts[1 - choice].strip(),
        }
        return records_lib.normalize_preference(rec, fields=_IDENTITY, fmt="plain", ck=ck)

    def _rows(self, files, split, report):
        # Every split pass reads every file; lines too broken to route by their 'split' field
        # are reported by the train pass alone.
        read_report = report if split == "train" else records_lib.BadRowReport("skip")
        for path in files:
            for row, obj in records_lib.read_rows(path, read_report):
                if read_report is not report:
                    report.rows_read += 1
                yield path, row, obj


# --------------------------------------------------------------------------------- GSM8K

_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


def gsm8k_final_answer(answer: str) -> str | None:
    """The text after the last "####", without thousands separators ("1,000" -> "1000")."""
    m = _GSM8K_ANSWER.search(answer)
    return m.group(1).replace(",", "").strip() if m else None


class AlignmentGsm8k(_ManualBuilder):
    """GSM8K grade-school math: question -> worked answer ending in "#### <number>"."""

    KIND = "sft"
    FIELDS = ("prompt", "completion", "final_answer")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put train.jsonl and test.jsonl of openai/grade-school-math (grade_school_math/data/) "
        "under the manual dir."
    )
    SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}

    def _record(self, obj, ck, split):
        question = ck.text(ck.get(obj, "question"), "question", empty_reason="empty_completion")
        answer = ck.text(ck.get(obj, "answer"), "answer", empty_reason="empty_completion")
        final = gsm8k_final_answer(answer)
        if not final:
            ck.fail("missing_final_answer", "answer", "no '#### <answer>' line")
        return {
            "prompt": question.strip() + "\n",
            "completion": answer.strip(),
            "final_answer": final,
        }


# ------------------------------------------------------------------------------- generic


@dataclasses.dataclass(eq=False)
class GenericConfig(tfds.core.BuilderConfig):
    """A JSONL/Parquet dataset described by its field names (see default_data_config)."""

    kind: str = "preference"
    fmt: str = "auto"
    fields: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(_IDENTITY))
    split_files: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {
            "train": "train*.jsonl,train*.jsonl.gz,train*.parquet",
            "test": "test*.jsonl,test*.jsonl.gz,test*.parquet",
        }
    )


def generic_config(
    *, kind: str, fmt: str, fields: Mapping[str, str], split_files: Mapping[str, str] | None = None
) -> GenericConfig:
    """A GenericConfig whose name encodes its settings, so different field mappings are
    prepared into different directories."""
    kw = {"kind": kind, "fmt": fmt, "fields": dict(fields)}
    if split_files:
        kw["split_files"] = dict(split_files)
    digest = hashlib.sha256(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:10]
    return GenericConfig(name=f"{kind}_{digest}", version=_VERSION, **kw)


class AlignmentGeneric(_ManualBuilder):
    """Any JSONL/Parquet preference or SFT data with configurable field names."""

    BUILDER_CONFIGS = [
        GenericConfig(name="preference", version=_VERSION, kind="preference"),
        GenericConfig(name="sft", version=_VERSION, kind="sft"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put {split}*.jsonl[.gz] or {split}*.parquet files (default splits train, test) under "
        "the manual dir; field names come from the builder config."
    )

    @property
    def kind(self) -> str:
        return self.builder_config.kind

    def _features(self):
        if self.builder_config.kind == "preference":
            return ("prompt", "chosen", "rejected")
        return ("prompt", "completion", "messages")

    def _split_files(self):
        return self.builder_config.split_files

    def _record(self, obj, ck, split):
        c = self.builder_config
        if c.kind == "preference":
            return records_lib.normalize_preference(obj, fields=c.fields, fmt=c.fmt, ck=ck)
        return records_lib.normalize_sft(obj, fields=c.fields, fmt=c.fmt, ck=ck)


BUILDERS = {
    b.name: b
    for b in (
        AlignmentHhRlhf,
        AlignmentUltrafeedback,
        AlignmentTldr,
        AlignmentGsm8k,
        AlignmentGeneric,
    )
}


# ------------------------------------------------------------------------------ reading


def prepare(cfg, *, kind: str) -> tfds.core.DatasetBuilder:
    """The builder named by data config `cfg`, prepared (once) from cfg.manual_dir."""
    if cfg.builder not in BUILDERS:
        raise ValueError(f"data.builder={cfg.builder!r} is not one of {sorted(BUILDERS)}")
    kwargs: dict[str, Any] = {"on_bad_row": cfg.on_bad_row}
    if cfg.builder == AlignmentGeneric.name:
        kwargs["config"] = generic_config(kind=kind, fmt=cfg.format, fields=dict(cfg.fields))
    elif cfg.builder_config:
        kwargs["config"] = cfg.builder_config
    if not cfg.data_dir:
        raise ValueError("data.data_dir must name where TFDS writes the prepared dataset")
    builder = BUILDERS[cfg.builder](data_dir=cfg.data_dir, **kwargs)
    if builder.kind != kind:
        raise ValueError(f"builder {cfg.builder} holds {builder.kind} data, not {kind}")
    if not builder.is_prepared():
        if not cfg.manual_dir:
            raise ValueError(
                f"{cfg.builder} is not prepared in {cfg.data_dir} and data.manual_dir is empty"
            )
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=cfg.manual_dir),
        )
    return builder


def load_tfds_records(
    cfg, *, kind: str, split: str, report: records_lib.BadRowReport
) -> list[tuple[str, Any, dict]]:
    """(source, row, record) of a prepared split; the bad rows counted at preparation are
    merged into `report` (and refused when data.on_bad_row='raise')."""
    builder = prepare(cfg, kind=kind)
    if split not in builder.info.splits:
        raise ValueError(f"{cfg.builder} has no split {split!r} (has {list(builder.info.splits)})")
    stored = builder.info.metadata.get("bad_rows", {}).get(split)
    if stored:
        if stored["rows_skipped"] and cfg.on_bad_row == "raise":
            raise records_lib.BadRowError(
                reason=min(stored["skipped_by_reason"]),
                source=builder.data_dir,
                row="(several)",
                field=None,
                detail=f"this dataset was prepared with on_bad_row='skip' and "
                f"{stored['rows_skipped']} rows were left out ({stored['skipped_by_reason']})",
            )
        stored = dict(stored, rows_kept=0)  # kept rows are counted after tokenisation
        report.merge(stored)
    source = builder.as_data_source(split=split)
    name = f"tfds:{builder.name}/{builder.builder_config.name if builder.builder_config else ''}"
    n = len(source) if not cfg.max_rows else min(len(source), cfg.max_rows)
    out = []
    for i in range(n):
        ex = source[i]
        rec = {
            k: json.loads(v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in ex.items()
        }
        out.append((f"{name}[{split}]", i, {k: v for k, v in rec.items() if v is not None}))
    if not stored:
        report.rows_read += n
    return out
