"""Data pipeline: sources (synthetic, TFDS builders, JSONL/Parquet) -> validated records ->
tokens (plain, transcript or chat template; truncation) -> padded or packed rows -> this
host's slice of each global batch, resumable exactly.

Public entry points: `default_data_config(kind)` and `make_iterator(...)`. TFDS builders live
in `alignment.data.builders` (imported on demand: it pulls in tensorflow_datasets).
"""

from alignment.data.config import check_data_config, default_data_config
from alignment.data.pipeline import DataIterator, load_examples, make_iterator
from alignment.data.records import BadRowError, BadRowReport, write_jsonl

__all__ = [
    "BadRowError",
    "BadRowReport",
    "DataIterator",
    "check_data_config",
    "default_data_config",
    "load_examples",
    "make_iterator",
    "write_jsonl",
]
