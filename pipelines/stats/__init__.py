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
    DroppedTerm,
    FitResult,
    ModelSpec,
    Term,
    build_design,
    cohort_scaling,
    derive_activity,
    design_for_fit,
    fit_model,
    likelihood_ratio_test,
    read_cohort_table,
)
from pipelines.stats.predict import marginal_probability, predict_probabilities

__all__ = [
    "DEFAULT_ADJUST", "DroppedTerm", "FitResult", "GlmmResult", "ModelSpec", "SeparationError",
    "Term", "build_design", "cohort_scaling", "derive_activity", "design_for_fit", "fit_model",
    "fit_random_intercept_logit", "gauss_hermite_normal", "likelihood_ratio_test",
    "marginal_probability", "predict_probabilities", "read_cohort_table",
]
