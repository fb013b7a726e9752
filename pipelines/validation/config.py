"""Settings of the validation report (one frozen value object, built in ``jobs/``)."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.quantify.config import (
    MERCURI_BASES,
    MERCURI_THRESHOLDS,
    MercuriBasis,
    check_mercuri_thresholds,
)

#: Muscle-level columns compared with truth (units as in schemas.metrics).
MUSCLE_METRICS: tuple[str, ...] = (
    "volume_cm3", "lean_cm3", "intermat_cm3", "intermat_pct", "ff_mean_pct", "ff_median_pct",
    "ff_lean_mean_pct", "mercuri_grade",
)
#: Participant-level columns compared with truth.
PARTICIPANT_METRICS: tuple[str, ...] = ("lmm_cm3", "lmm_index", "intermat_pct",
                                        "lesion_load_pct")
FIGURE_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")


@dataclass(frozen=True)
class ValidationConfig:
    """What the validation compares and how.

    Parameters
    ----------
    muscle_metrics : muscle-table columns compared per muscle and pooled over muscles
        (default: every volume, percentage and the Mercuri grade).
    participant_metrics : participant-table columns compared (default: lean muscle mass,
        LMM index, InterMAT %, lesion load %).
    mercuri_thresholds, mercuri_basis : the Mercuri mapping the run used (defaults: quantify's
        defaults). The truth tables' grades come from the synthesiser's own fixed mapping, so
        the truth grades and lesion load are recomputed from the truth's continuous metrics
        with this mapping; a run whose grades do not follow it is regraded (and the summary
        says so).
    loa_z : limits of agreement are ``bias +- loa_z * SD`` of the differences (1.96: 95 %).
    refit_on_truth : also fit the run's model on the TRUE exposures of the same participants,
        so the attenuation due to measurement error is separated from sampling error.
    figure_formats : Bland-Altman figure files written (``png``, ``svg``, ``pdf``).
    """

    muscle_metrics: tuple[str, ...] = MUSCLE_METRICS
    participant_metrics: tuple[str, ...] = PARTICIPANT_METRICS
    mercuri_thresholds: tuple[float, float, float, float] = MERCURI_THRESHOLDS
    mercuri_basis: MercuriBasis = "mean_ff"
    loa_z: float = 1.96
    refit_on_truth: bool = True
    figure_formats: tuple[str, ...] = ("png", "svg")

    def __post_init__(self) -> None:
        for name, known in (("muscle_metrics", MUSCLE_METRICS),
                            ("participant_metrics", PARTICIPANT_METRICS)):
            values = tuple(getattr(self, name))
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ValueError(f"{name}: unknown metric(s) {unknown}; valid: {list(known)}")
            object.__setattr__(self, name, values)
        object.__setattr__(self, "mercuri_thresholds",
                           check_mercuri_thresholds(self.mercuri_thresholds))
        if self.mercuri_basis not in MERCURI_BASES:
            raise ValueError(f"mercuri_basis {self.mercuri_basis!r}: choose one of {MERCURI_BASES}")
        if not self.loa_z > 0:
            raise ValueError(f"loa_z {self.loa_z} must be > 0")
        formats = tuple(self.figure_formats)
        bad = [f for f in formats if f not in FIGURE_FORMATS]
        if bad:
            raise ValueError(f"figure_formats: {bad} not supported; valid: {list(FIGURE_FORMATS)}")
        object.__setattr__(self, "figure_formats", formats)
