"""Learners turn a batch into loss inputs through a log-prob function; they never build a model.

`offline`: SFT demonstrations and preference pairs (with the reference in-step or precomputed).
"""

from alignment.learners import offline

__all__ = ["offline"]
