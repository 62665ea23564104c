"""alignment: LLM policy optimisation in JAX/Flax.

Importing this package changes no jax.config and does no I/O. Submodules are imported
explicitly (`from alignment import losses`, `alignment.models.from_pretrained`, ...).
"""

__version__ = "0.1.0"
