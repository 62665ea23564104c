"""Flax NNX decoder LM, Hugging Face import/export, presets.

Non-model code uses `split`/`merge` to turn a model into (graphdef, state) and back without
importing flax itself.
"""

from flax import nnx as _nnx

from alignment.models import hf
from alignment.models.config import PRESETS, ModelConfig, get_preset
from alignment.models.heads import (
    last_token_index,
    make_score_fn,
    make_value_fn,
    sequence_scores,
    token_values,
)
from alignment.models.transformer import Transformer, create_sharded


def split(model):
    """(graphdef, state): the static structure and the pytree of parameters of a model."""
    return _nnx.split(model)


def merge(graphdef, state):
    """The model rebuilt from `split`'s output (e.g. inside a jitted function)."""
    return _nnx.merge(graphdef, state)


def from_pretrained(path, *, dtype=None, mesh=None, num_labels=None, **execution):
    """Loads a Hugging Face folder (config.json + safetensors); see `alignment.models.hf`.

    num_labels: None = as the folder says; an int > 0 loads a causal LM (or a classifier) as a
    sequence classifier with that many labels (a fresh score head when the folder has none)."""
    return hf.from_pretrained(path, dtype=dtype, mesh=mesh, num_labels=num_labels, **execution)


def save_pretrained(model, path, **kwargs):
    """Writes a Hugging Face folder that `transformers.AutoModelForCausalLM` loads (a model with a
    score head and no LM head: `AutoModelForSequenceClassification`); see `hf`."""
    return hf.save_pretrained(model, path, **kwargs)


__all__ = [
    "ModelConfig",
    "Transformer",
    "get_preset",
    "PRESETS",
    "from_pretrained",
    "save_pretrained",
    "split",
    "merge",
    "create_sharded",
    "sequence_scores",
    "token_values",
    "last_token_index",
    "make_score_fn",
    "make_value_fn",
]
