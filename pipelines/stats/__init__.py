"""Cohort statistics: logistic regression with a random intercept per site by adaptive
Gauss-Hermite quadrature (the model of ``lme4::glmer(..., nAGQ=)``), the study design
(exposures per 2 SD, derived activity groups) and ``fit.json``."""

from __future__ import annotations

from pipelines.stats.glmm import (
    GlmmResult,
    SeparationError,
    fit_random_intercept_logit,
    gauss_hermite_normal,
)
from pipelines.stats.model import (
    DEFAULT_ADJUST,
    FitResult,
    ModelSpec,
    Term,
    build_design,
    derive_activity,
    fit_model,
    read_cohort_table,
)

__all__ = [
    "DEFAULT_ADJUST", "FitResult", "GlmmResult", "ModelSpec", "SeparationError", "Term",
    "build_design", "derive_activity", "fit_model", "fit_random_intercept_logit",
    "gauss_hermite_normal", "read_cohort_table",
]
