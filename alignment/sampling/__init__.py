"""KV-cache generation: `generate` (lists in, lists out) and the jittable `sample_arrays`.

Imports no Flax: the model is turned into (graphdef, state) with `alignment.models.split`.
"""

from alignment.sampling.processors import (
    SamplingParams,
    min_p_filter,
    sample_token,
    temperature_scale,
    top_k_filter,
    top_p_filter,
)
from alignment.sampling.sampler import (
    GenerateOutput,
    SampleArrays,
    generate,
    left_pad,
    sample_arrays,
)

__all__ = [
    "generate",
    "sample_arrays",
    "left_pad",
    "GenerateOutput",
    "SampleArrays",
    "SamplingParams",
    "sample_token",
    "temperature_scale",
    "top_k_filter",
    "top_p_filter",
    "min_p_filter",
]
