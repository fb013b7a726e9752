"""Synthetic whole-body Dixon cohorts with planted effects (``myocohort synth``)."""

from __future__ import annotations

from pipelines.synth.phantom import Phantom, PhantomSpec, make_phantom

__all__ = ["Phantom", "PhantomSpec", "make_phantom"]
