"""alignment: a JAX/Flax research library for LLM policy optimisation."""

from setuptools import find_packages, setup

setup(
    name="alignment",
    version="0.1.0",
    description="JAX/Flax objectives, models and training for LLM alignment research.",
    packages=find_packages(include=["alignment", "alignment.*"]),
    # the tiny pretrained bases the default experiment starts from (safetensors + tokenizer)
    package_data={"alignment": ["assets/bases/*/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "numpy",
        "safetensors",
        # tokenization and chat templates: transformers' fast tokenizers (no torch needed);
        # transformers does not require jinja2, its chat templates do
        "transformers>=5",
        "tokenizers",
        "sentencepiece",
        "jinja2",
        "tqdm",
        "tensorboardX",
        "matplotlib",
        "vaderSentiment",
        "grain",
        "array-record",
        "tensorflow-datasets",
        "pyarrow",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",
            "hypothesis",
            "nbclient",
            "nbformat",
            "ipykernel",
            "ruff==0.17.5",
        ],
        # Parity references: tiny random Hugging Face models (transformers' torch models). torch is
        # pinned to the CPU wheel these machines carry; an unpinned torch pulls a multi-GB CUDA build.
        "parity": ["torch==2.13.0"],
        "reasoning": ["reasoning-gym"],
    },
)
