"""Synthetic whole-body Dixon cohorts with planted effects (``myocohort synth``)."""

from __future__ import annotations

from pipelines.synth.cohort import (
    CbpModel,
    PainModel,
    SynthConfig,
    SynthResult,
    build_cohort,
    cohort_phantom,
)
from pipelines.synth.phantom import Phantom, PhantomSpec, make_phantom
from pipelines.synth.truth import FineTruth, truth_metrics, truth_tables

__all__ = [
    "CbpModel",
    "FineTruth",
    "PainModel",
    "Phantom",
    "PhantomSpec",
    "SynthConfig",
    "SynthResult",
    "build_cohort",
    "cohort_phantom",
    "make_phantom",
    "truth_metrics",
    "truth_tables",
]
