"""Measured metrics against the truth of a synthetic cohort (``myocohort validate-metrics``).

A run of the pipeline on a cohort made by ``myocohort synth`` is compared, per metric and per
muscle, with the cohort's ``truth/`` tables: bias, Bland-Altman limits of agreement, Pearson
correlation, Mercuri grade agreement, and the fitted odds ratios against the planted ones
with their attenuation.  Only the files a run and the synthesiser write are read, so any
workdir of a synthetic cohort can be validated, however it was made.
"""

from __future__ import annotations

from pipelines.validation.agreement import Agreement, GradeAgreement, agreement, grade_agreement
from pipelines.validation.config import ValidationConfig
from pipelines.validation.inputs import (
    RunTables,
    SynthTruth,
    ValidationInputError,
    read_run,
    read_truth,
)
from pipelines.validation.report import (
    RunValidation,
    ValidationResult,
    summary_markdown,
    validate_run,
    validate_runs,
    write_validation,
)

__all__ = [
    "Agreement",
    "GradeAgreement",
    "RunTables",
    "RunValidation",
    "SynthTruth",
    "ValidationConfig",
    "ValidationInputError",
    "ValidationResult",
    "agreement",
    "grade_agreement",
    "read_run",
    "read_truth",
    "summary_markdown",
    "validate_run",
    "validate_runs",
    "write_validation",
]
