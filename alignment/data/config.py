"""Every data default in one ConfigDict, and the checks that run before any file is read.

`default_data_config(kind)` is what `configs/*.py` start from; library code reads keys
directly (no `.get(key, default)`), so a missing or misspelt key fails here, not mid-run.
"""

from __future__ import annotations

import ml_collections

from alignment import tasks

KINDS = ("sft", "preference")
SOURCES = ("synthetic", "tfds", "jsonl", "parquet", "task")
FORMATS = ("auto", "plain", "conversational")
PROMPT_TRUNCATION = ("keep_end", "keep_start")
TRUNCATION = ("truncate_response", "drop")
ON_BAD_ROW = ("raise", "skip")


def default_data_config(kind: str) -> ml_collections.ConfigDict:
    """All data settings with their defaults; `kind` is "sft" or "preference".

    The defaults describe the synthetic sorting task (no files, tiny lengths) so that a tiny
    config runs out of the box; real-data configs override `source`, `builder`, the paths and
    the lengths.
    """
    if kind not in KINDS:
        raise ValueError(f"default_data_config: kind must be one of {KINDS}, got {kind!r}")
    c = ml_collections.ConfigDict()
    c.kind = kind
    # Where rows come from. "tfds": a builder from alignment.data.builders prepared from
    # `manual_dir` into `data_dir` (ArrayRecord); "jsonl"/"parquet": files matched by `files`.
    c.source = "synthetic"
    c.builder = ""  # e.g. "alignment_hh_rlhf", "alignment_ultrafeedback", "alignment_tldr",
    #                 "alignment_gsm8k", "alignment_generic"
    c.builder_config = ""  # TFDS builder config name ("" = the builder's default)
    c.manual_dir = ""
    c.data_dir = ""
    # split name used by the trainer ("train", "eval") -> split name in the source.
    c.splits = ml_collections.ConfigDict({"train": "train", "eval": "test"})
    # jsonl/parquet sources: split name (in the source) -> comma-separated file globs.
    c.files = ml_collections.ConfigDict({"train": "", "test": ""})
    # Column names in the raw rows (jsonl/parquet sources and the generic TFDS builder).
    c.fields = ml_collections.ConfigDict(
        {
            "prompt": "prompt",
            "chosen": "chosen",
            "rejected": "rejected",
            "completion": "completion",
            "messages": "messages",
        }
    )
    # "plain": strings; "conversational": lists of {"role", "content"}; "auto": per row.
    c.format = "auto"
    # Render conversations with the tokenizer's chat template; off = plain transcript
    # ("\n\nHuman: ...\n\nAssistant:", the HH-RLHF convention) for conversational rows.
    c.chat_template = False
    c.max_prompt_len = 32
    c.max_len = 64
    c.prompt_truncation = "keep_end"
    # What to do with a row longer than max_len once the prompt is cut to max_prompt_len:
    # cut the response, or drop the row (counted under "too_long" in the report).
    c.truncation = "truncate_response"
    c.packing = False  # SFT only: several examples per row with segment ids
    c.packing_open_bins = 8  # first-fit packing keeps this many partly filled rows open
    c.shuffle = True
    c.seed = 0  # the trainer passes this as make_iterator(seed=...)
    c.on_bad_row = "raise"
    c.max_rows = 0  # read at most this many rows per split (0 = all); for smoke runs
    c.synthetic = ml_collections.ConfigDict(
        {
            "seed": 0,  # what the rows are (the shuffle order comes from make_iterator's seed)
            "num_examples": 4096,
            "num_eval_examples": 256,
            "min_items": 3,
            "max_items": 6,
            "max_value": 9,
        }
    )
    # source "task": rows drawn from an embedded task (alignment.data.task_pairs): demonstrations
    # (sft) or gold-labelled pairs (preference); held-out splits always carry gold labels
    c.task_source = ml_collections.ConfigDict(
        {
            "name": "",  # alignment.tasks.available(), e.g. "sentiment"
            "num_examples": 2048,  # rows of the train split
            "num_eval_examples": 256,  # rows of any other split
            "seed": 0,
            "label_temperature": 0.0,  # > 0: noisy Bradley-Terry labels on the train split
        }
    )
    return c


def check_data_config(cfg: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the key for any value outside its allowed set."""
    default = default_data_config(cfg.kind if "kind" in cfg else "sft")
    unknown = sorted(set(cfg.keys()) - set(default.keys()))
    if unknown:
        raise ValueError(f"data config: unknown keys {unknown}")
    missing = sorted(set(default.keys()) - set(cfg.keys()))
    if missing:
        raise ValueError(f"data config: missing keys {missing}")

    def one_of(key, allowed):
        if cfg[key] not in allowed:
            raise ValueError(f"data config: {key}={cfg[key]!r} is not one of {allowed}")

    one_of("kind", KINDS)
    one_of("source", SOURCES)
    one_of("format", FORMATS)
    one_of("prompt_truncation", PROMPT_TRUNCATION)
    one_of("truncation", TRUNCATION)
    one_of("on_bad_row", ON_BAD_ROW)
    if not (isinstance(cfg.max_len, int) and cfg.max_len >= 2):
        raise ValueError(f"data config: max_len must be an int >= 2, got {cfg.max_len!r}")
    if not (isinstance(cfg.max_prompt_len, int) and 1 <= cfg.max_prompt_len <= cfg.max_len):
        raise ValueError(
            "data config: max_prompt_len must be an int in [1, max_len], got "
            f"{cfg.max_prompt_len!r} with max_len={cfg.max_len}"
        )
    if cfg.packing and cfg.kind != "sft":
        raise ValueError("data config: packing=True is only supported for kind='sft'")
    if cfg.packing_open_bins < 1:
        raise ValueError("data config: packing_open_bins must be >= 1")
    if cfg.source == "tfds" and not cfg.builder:
        raise ValueError("data config: source='tfds' needs data.builder (e.g. 'alignment_hh_rlhf')")
    if cfg.source == "task":
        t = cfg.task_source
        if t.name not in tasks.available():
            raise ValueError(
                f"data config: source='task' needs task_source.name, one of {tasks.available()}; "
                f"got {t.name!r}"
            )
        if t.num_examples < 1 or t.num_eval_examples < 1:
            raise ValueError(
                "data config: task_source needs num_examples >= 1 and num_eval_examples >= 1"
            )
        if t.label_temperature < 0:
            raise ValueError(
                f"data config: task_source.label_temperature must be >= 0, got {t.label_temperature}"
            )
    if cfg.max_rows < 0:
        raise ValueError("data config: max_rows must be >= 0")
    s = cfg.synthetic
    if not 1 <= s.min_items <= s.max_items:
        raise ValueError("data config: synthetic needs 1 <= min_items <= max_items")
    if s.max_value < 1 or s.num_examples < 1:
        raise ValueError("data config: synthetic needs max_value >= 1 and num_examples >= 1")
