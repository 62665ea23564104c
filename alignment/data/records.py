"""Raw rows -> validated records, with every rejected row named or counted.

A *record* is the normalised form every source is reduced to before tokenisation:

- preference: `{"prompt": P, "chosen": R, "rejected": R}`
- sft:        `{"prompt": P, "completion": R}` or `{"messages": [msg, ...]}`

where P and R are both strings ("plain" format) or both lists of `{"role", "content"}` messages
("conversational"; the prompt ends before the first response message, R holds assistant turns).

Bad rows (malformed JSON, invalid UTF-8, a missing field, non-string content, an empty or
identical response, ...) raise `BadRowError` naming file, row and field, or with
`on_bad_row="skip"` are counted by reason in a `BadRowReport` that is logged and returned when
preprocessing ends. Nothing is dropped without being counted.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import logging
import os
from typing import Any, Iterator, Mapping

import pyarrow.parquet as pq

ROLES = ("system", "user", "assistant", "tool")

# Every reason a row can be rejected for, so reports and tests share one vocabulary.
REASONS = (
    "malformed_json",
    "invalid_utf8",
    "not_an_object",
    "missing_field",
    "non_string",
    "wrong_type",
    "bad_message",
    "empty_chosen",
    "empty_rejected",
    "empty_completion",
    "chosen_equals_rejected",
    "prompt_mismatch",
    "no_assistant_turn",
    "missing_final_answer",
    "no_response_tokens",
    "too_long",
)


class BadRowError(ValueError):
    """A row that cannot be used, with where it is and why."""

    def __init__(self, *, reason: str, source: str, row: int | str, field: str | None, detail: str):
        self.reason, self.source, self.row, self.field, self.detail = (
            reason,
            source,
            row,
            field,
            detail,
        )
        where = f"{source}, row {row}" + (f", field {field!r}" if field else "")
        super().__init__(
            f"bad row ({reason}) at {where}: {detail}. Fix the row, or set "
            "data.on_bad_row='skip' to count and skip such rows."
        )


class BadRowReport:
    """Counts rejected rows by reason (keeping the first few locations) or raises at once."""

    MAX_EXAMPLES = 5

    def __init__(self, on_bad_row: str = "raise"):
        if on_bad_row not in ("raise", "skip"):
            raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {on_bad_row!r}")
        self.on_bad_row = on_bad_row
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)
        self.rows_read = 0
        self.rows_kept = 0
        # Kept rows that were cut to fit (not bad, but worth knowing: a config whose max_len is
        # too small for its data shows up here).
        self.truncated = collections.Counter({"prompt": 0, "response": 0})

    def bad(
        self,
        *,
        reason: str,
        source: str,
        row: int | str,
        field: str | None = None,
        detail: str = "",
        force_skip: bool = False,
    ) -> None:
        """Record a bad row; raises BadRowError unless skipping (or `force_skip`, used for
        rows the user asked to drop, e.g. truncation='drop')."""
        if reason not in REASONS:
            raise AssertionError(f"unknown bad-row reason {reason!r}")
        err = BadRowError(reason=reason, source=source, row=row, field=field, detail=detail)
        if self.on_bad_row == "raise" and not force_skip:
            raise err
        self.counts[reason] += 1
        if len(self.examples[reason]) < self.MAX_EXAMPLES:
            self.examples[reason].append(str(err).split(". Fix the row")[0])

    @property
    def rows_skipped(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: "BadRowReport | Mapping[str, Any]") -> None:
        d = other.as_dict() if isinstance(other, BadRowReport) else other
        self.counts.update(d["skipped_by_reason"])
        for reason, ex in d["examples"].items():
            self.examples[reason].extend(ex[: self.MAX_EXAMPLES - len(self.examples[reason])])
        self.rows_read += d["rows_read"]
        self.rows_kept += d["rows_kept"]
        self.truncated.update(d.get("truncated", {}))  # absent in reports stored before it existed

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_skipped": self.rows_skipped,
            "skipped_by_reason": dict(sorted(self.counts.items())),
            "truncated": dict(self.truncated),
            "examples": {k: list(v) for k, v in sorted(self.examples.items())},
        }

    def summary(self, name: str) -> str:
        cut = ""
        if self.truncated["prompt"] or self.truncated["response"]:
            cut = (
                f"; truncated {self.truncated['prompt']} prompts and "
                f"{self.truncated['response']} responses"
            )
        if not self.counts:
            return f"{name}: kept {self.rows_kept} of {self.rows_read} rows, none skipped{cut}"
        by = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return (
            f"{name}: kept {self.rows_kept} of {self.rows_read} rows, skipped "
            f"{self.rows_skipped} ({by}){cut}; first: {self.examples[min(self.examples)][0]}"
        )

    def log(self, name: str) -> None:
        noisy = self.counts or self.truncated["prompt"] or self.truncated["response"]
        logging.log(logging.WARNING if noisy else logging.INFO, "%s", self.summary(name))


# --------------------------------------------------------------------------- file readers


def expand_files(patterns: str, *, what: str) -> list[str]:
    """Comma-separated globs -> sorted file list; an unmatched pattern is an error."""
    files: list[str] = []
    for pat in [p.strip() for p in patterns.split(",") if p.strip()]:
        hits = sorted(glob.glob(os.path.expanduser(pat)))
        if not hits:
            raise FileNotFoundError(f"{what}: no file matches {pat!r}")
        files.extend(hits)
    if not files:
        raise FileNotFoundError(f"{what}: no file pattern given")
    return files


def read_jsonl(path: str, report: BadRowReport) -> Iterator[tuple[int, dict]]:
    """(line number from 1, object) per non-blank line of a .jsonl / .json / .jsonl.gz file."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            report.rows_read += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.bad(
                    reason="invalid_utf8",
                    source=path,
                    row=lineno,
                    detail=f"byte {e.start} is not UTF-8 ({e.reason})",
                )
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                report.bad(
                    reason="malformed_json",
                    source=path,
                    row=lineno,
                    detail=f"{e.msg} at column {e.colno}",
                )
                continue
            if not isinstance(obj, dict):
                report.bad(
                    reason="not_an_object",
                    source=path,
                    row=lineno,
                    detail=f"expected a JSON object, got {type(obj).__name__}",
                )
                continue
            yield lineno, obj


def write_jsonl(rows, path) -> str:
    """Writes `rows` (dicts) one JSON object per line, atomically (a temporary file renamed into
    place, so a re-run never reads a half-written file); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
    return path


def read_parquet(path: str, report: BadRowReport) -> Iterator[tuple[int, dict]]:
    """(row index from 0, row dict) per row of a parquet file, read in record batches."""
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            report.rows_read += 1
            yield row, obj
            row += 1


def read_rows(path: str, report: BadRowReport) -> Iterator[tuple[int, dict]]:
    if path.endswith(".parquet"):
        return read_parquet(path, report)
    return read_jsonl(path, report)


# ---------------------------------------------------------------------- field validation


class _Skip(Exception):
    """Internal: the row was reported as bad and (on_bad_row='skip') must be left out."""


class RowChecker:
    """Field access and checks for one row, reporting problems with its location."""

    def __init__(self, report: BadRowReport, source: str, row: int | str):
        self.report, self.source, self.row = report, source, row

    def fail(self, reason: str, field: str | None, detail: str):
        self.report.bad(reason=reason, source=self.source, row=self.row, field=field, detail=detail)
        raise _Skip()

    def get(self, obj: Mapping, path: str) -> Any:
        """`path` may be dotted with list indices, e.g. "info.post" or "summaries.0.text"."""
        cur: Any = obj
        for part in path.split("."):
            if isinstance(cur, Mapping) and part in cur:
                cur = cur[part]
            elif isinstance(cur, (list, tuple)) and part.isdigit() and int(part) < len(cur):
                cur = cur[int(part)]
            else:
                keys = sorted(cur.keys()) if isinstance(cur, Mapping) else type(cur).__name__
                self.fail("missing_field", path, f"not present (available: {keys})")
        if cur is None:
            self.fail("missing_field", path, "is null")
        return cur

    def text(self, value: Any, field: str, *, empty_reason: str | None = None) -> str:
        if not isinstance(value, str):
            self.fail("non_string", field, f"expected a string, got {type(value).__name__}")
        if empty_reason and not value.strip():
            self.fail(empty_reason, field, "is empty")
        return value

    def messages(self, value: Any, field: str) -> list[dict[str, str]]:
        if not isinstance(value, (list, tuple)) or not value:
            self.fail(
                "bad_message",
                field,
                f"expected a non-empty list of messages, got {type(value).__name__}",
            )
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                self.fail("bad_message", f"{field}[{i}]", "a message needs 'role' and 'content'")
            if m["role"] not in ROLES:
                self.fail("bad_message", f"{field}[{i}].role", f"unknown role {m['role']!r}")
            self.text(m["content"], f"{field}[{i}].content")
            out.append({"role": str(m["role"]), "content": m["content"]})
        return out


def _as_messages(ck: RowChecker, value: Any, field: str, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return ck.messages(value, field)


def _response_messages(ck, value, field, empty_reason):
    msgs = ck.messages(value, field)
    if not any(m["role"] == "assistant" for m in msgs):
        ck.fail("no_assistant_turn", field, "has no assistant message")
    if not "".join(m["content"] for m in msgs if m["role"] == "assistant").strip():
        ck.fail(empty_reason, field, "assistant content is empty")
    return msgs


def normalize_preference(
    obj: Mapping, *, fields: Mapping[str, str], fmt: str, ck: RowChecker
) -> dict:
    """Raw row -> `{"prompt", "chosen", "rejected"}`; conversational rows whose chosen and
    rejected carry the whole conversation (UltraFeedback style) are split at the last turn."""
    chosen = ck.get(obj, fields["chosen"])
    rejected = ck.get(obj, fields["rejected"])
    conversational = fmt == "conversational" or (
        fmt == "auto" and isinstance(chosen, (list, tuple))
    )
    if not conversational:
        prompt = ck.text(ck.get(obj, fields["prompt"]), fields["prompt"])
        chosen = ck.text(chosen, fields["chosen"], empty_reason="empty_chosen")
        rejected = ck.text(rejected, fields["rejected"], empty_reason="empty_rejected")
    else:
        chosen = _as_messages(ck, chosen, fields["chosen"], "assistant")
        rejected = _as_messages(ck, rejected, fields["rejected"], "assistant")
        if len(chosen) > 1 or len(rejected) > 1:
            # Whole conversations: the shared history is the prompt, the last turn the response.
            if chosen[:-1] != rejected[:-1]:
                ck.fail(
                    "prompt_mismatch",
                    fields["rejected"],
                    "chosen and rejected conversations differ before their last turn",
                )
            prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        else:
            prompt = _as_messages(ck, ck.get(obj, fields["prompt"]), fields["prompt"], "user")
        chosen = _response_messages(ck, chosen, fields["chosen"], "empty_chosen")
        rejected = _response_messages(ck, rejected, fields["rejected"], "empty_rejected")
    if chosen == rejected:
        ck.fail("chosen_equals_rejected", fields["rejected"], "identical to the chosen response")
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    # A rejected response that is an unfinished prefix (per-step negatives) is trained without
    # an EOS: it never ended, so its likelihood must not include ending there.
    flag = obj.get("rejected_is_prefix", False) if isinstance(obj, Mapping) else False
    if not isinstance(flag, bool):
        ck.fail("wrong_type", "rejected_is_prefix", f"must be a boolean, got {type(flag).__name__}")
    if flag:
        out["rejected_is_prefix"] = True
    return out


def normalize_sft(obj: Mapping, *, fields: Mapping[str, str], fmt: str, ck: RowChecker) -> dict:
    """Raw row -> `{"prompt", "completion"}` (plain) or `{"messages"}` (conversational)."""
    conversational = fmt == "conversational" or (
        fmt == "auto" and fields["messages"].split(".")[0] in obj
    )
    if conversational:
        msgs = ck.messages(ck.get(obj, fields["messages"]), fields["messages"])
        if not any(m["role"] == "assistant" for m in msgs):
            ck.fail("no_assistant_turn", fields["messages"], "has no assistant message")
        if not "".join(m["content"] for m in msgs if m["role"] == "assistant").strip():
            ck.fail("empty_completion", fields["messages"], "assistant content is empty")
        return {"messages": msgs}
    prompt = ck.text(ck.get(obj, fields["prompt"]), fields["prompt"])
    completion = ck.text(
        ck.get(obj, fields["completion"]), fields["completion"], empty_reason="empty_completion"
    )
    return {"prompt": prompt, "completion": completion}


def normalize(
    obj: Mapping,
    *,
    kind: str,
    fields: Mapping[str, str],
    fmt: str,
    report: BadRowReport,
    source: str,
    row: int | str,
) -> dict | None:
    """One raw row -> record, or None after reporting it (skip mode)."""
    ck = RowChecker(report, source, row)
    try:
        if kind == "preference":
            return normalize_preference(obj, fields=fields, fmt=fmt, ck=ck)
        return normalize_sft(obj, fields=fields, fmt=fmt, ck=ck)
    except _Skip:
        return None
