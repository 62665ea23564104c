"""Miniature reproductions of the seed papers' claims: `python -m experiments.reproduce.<name> --out DIR`."""
