"""Seeded synthetic cohort tables with planted odds ratios, for tests and benchmarks.

The cohort table mimics ``tables/cohort.parquet`` (participant metrics joined with
covariates); the outcome ``cbp`` follows a logistic model with a random intercept per site,
with log-odds ratios given per 2 SD of each exposure (the scale the fit reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CohortSimSpec:
    """What to plant in a simulated cohort.

    Attributes
    ----------
    n, n_sites : int
        Participants and sites.
    site_sd : float
        SD of the site random intercept (log-odds).
    intercept : float
        Log-odds of CBP for a reference participant.
    or_per_2sd : dict
        Planted odds ratio per 2 SD of each exposure (``intermat_pct``, ``lmm_index``).
    or_covariates : dict
        Planted odds ratios of the adjusters (per unit; for ``activity`` per level vs
        moderate, ``sex`` female vs male).
    or_interaction : float
        Planted odds ratio of the ``intermat_pct:lmm_index`` product (per 2 SD x 2 SD); 1 =
        no interaction.
    myopathy : bool
        Add ``diagnosis`` and ``disease_duration_years`` and a muscle table with grades.
    imnm_severe_fraction, imnm_severe_grades : float
        With ``myopathy``: the share of IMNM patients in a planted severe subgroup, whose
        grades are raised by ``imnm_severe_grades`` in the first half of the muscles
        (``planted_subgroup`` says who is in which).
    """

    n: int = 2000
    n_sites: int = 6
    site_sd: float = 0.4
    intercept: float = -1.0
    or_per_2sd: dict = field(default_factory=lambda: {"intermat_pct": 1.8, "lmm_index": 0.7})
    or_covariates: dict = field(default_factory=lambda: {
        "age": 1.01, "sex_female": 1.3, "diabetes": 1.2, "dyslipidemia": 1.1,
        "osteoporosis": 1.4, "osteoarthritis": 1.6, "activity_low": 1.3, "activity_high": 0.9,
    })
    or_interaction: float = 1.0
    myopathy: bool = False
    imnm_severe_fraction: float = 0.4
    imnm_severe_grades: float = 3.0

    def __post_init__(self) -> None:
        if self.n < 2 or self.n_sites < 1:
            raise ValueError(f"need n >= 2 and n_sites >= 1, got {self.n}, {self.n_sites}")
        if not self.or_interaction > 0:
            raise ValueError(f"or_interaction must be > 0, got {self.or_interaction}")
        if not 0 <= self.imnm_severe_fraction <= 1:
            raise ValueError(f"imnm_severe_fraction must be in 0..1, got "
                             f"{self.imnm_severe_fraction}")


def simulate_cohort(spec: CohortSimSpec, seed: int):
    """Return ``(cohort, muscles)``: a participant table and a participant x muscle table.

    Columns of ``cohort``: participant_id, site, age, sex, bmi, diabetes, dyslipidemia,
    osteoporosis, osteoarthritis, met_min_week, intermat_pct, lmm_cm3, lmm_index,
    lesion_load_pct, cbp, pain_nrs (NaN without CBP) and, with ``myopathy``, diagnosis,
    disease_duration_years, lesion_load_quotient, planted_subgroup.
    """
    import pandas as pd

    from schemas.vocabulary import MUSCLE_NAMES as MUSCLES

    rng = np.random.default_rng(seed)
    n = spec.n
    site_names = np.array([f"site{i + 1:02d}" for i in range(spec.n_sites)])
    site = rng.integers(0, spec.n_sites, n)
    site_eff = rng.normal(0, spec.site_sd, spec.n_sites)
    age = rng.uniform(20, 80, n)
    female = rng.random(n) < 0.5
    bmi = rng.normal(26, 4, n).clip(16, 50)
    diabetes = (rng.random(n) < 0.1).astype(float)
    dyslip = (rng.random(n) < 0.2).astype(float)
    osteopor = (rng.random(n) < 0.08 + 0.1 * female).astype(float)
    osteoarth = (rng.random(n) < 0.1 + 0.003 * (age - 20)).astype(float)
    met = rng.lognormal(np.log(1500), 1.0, n)
    intermat = (8 + 0.1 * (age - 50) + 2 * female + rng.normal(0, 3, n)).clip(0.5, None)
    lmm = rng.normal(np.where(female, 9000, 13000), 1500, n).clip(3000, None)
    lmm_index = lmm / bmi
    z_im = (intermat - intermat.mean()) / (2 * intermat.std(ddof=1))
    z_lmm = (lmm_index - lmm_index.mean()) / (2 * lmm_index.std(ddof=1))
    c = spec.or_covariates
    lo = (
        spec.intercept
        + np.log(spec.or_per_2sd["intermat_pct"]) * z_im
        + np.log(spec.or_per_2sd["lmm_index"]) * z_lmm
        + np.log(spec.or_interaction) * z_im * z_lmm
        + np.log(c["age"]) * age
        - np.log(c["age"]) * 50
        + np.log(c["sex_female"]) * female
        + np.log(c["diabetes"]) * diabetes
        + np.log(c["dyslipidemia"]) * dyslip
        + np.log(c["osteoporosis"]) * osteopor
        + np.log(c["osteoarthritis"]) * osteoarth
        + np.log(c["activity_low"]) * (met < 500)
        + np.log(c["activity_high"]) * (met > 5000)
        + site_eff[site]
    )
    cbp = (rng.random(n) < 1 / (1 + np.exp(-lo))).astype(float)
    nrs = np.where(cbp == 1, np.clip(np.round(rng.normal(3.5 + 0.3 * z_im * 2, 2)), 0, 10), np.nan)
    grades = np.clip(np.round(intermat[:, None] / 8 + rng.normal(0, 0.7, (n, len(MUSCLES)))), 0, 4)
    lesion = 100 * grades.sum(1) / (4 * len(MUSCLES))
    ids = np.array([f"P{i:05d}" for i in range(n)])
    cohort = pd.DataFrame({
        "participant_id": pd.array(ids, dtype="string"),
        "site": pd.array(site_names[site], dtype="string"),
        "age": age, "sex": pd.array(np.where(female, "female", "male"), dtype="string"),
        "bmi": bmi, "diabetes": diabetes, "dyslipidemia": dyslip, "osteoporosis": osteopor,
        "osteoarthritis": osteoarth, "met_min_week": met, "intermat_pct": intermat,
        "lmm_cm3": lmm, "lmm_index": lmm_index, "lesion_load_pct": lesion, "cbp": cbp,
        "pain_nrs": nrs,
    })
    if spec.myopathy:
        diag = rng.choice(["IMNM", "IBM"], n)
        dur = rng.uniform(0.5, 15, n)
        # planted: lesion load rises with duration and is higher in IBM
        g2 = np.clip(np.round(grades + (dur[:, None] / 6) + (diag == "IBM")[:, None]
                              * rng.integers(0, 2, (n, len(MUSCLES)))), 0, 4)
        # planted: a severe IMNM subgroup with more fat replacement in half of the muscles
        # (drawn last, so every other column is as without it)
        severe = (diag == "IMNM") & (rng.random(n) < spec.imnm_severe_fraction)
        half = np.arange(len(MUSCLES)) < len(MUSCLES) // 2
        grades = np.clip(g2 + np.round(spec.imnm_severe_grades * severe[:, None] * half), 0, 4)
        lesion = 100 * grades.sum(1) / (4 * len(MUSCLES))
        cohort["lesion_load_pct"] = lesion
        cohort["planted_subgroup"] = pd.array(
            np.where(diag == "IBM", "IBM", np.where(severe, "IMNM severe", "IMNM mild")),
            dtype="string")
        cohort["diagnosis"] = pd.array(diag, dtype="string")
        cohort["disease_duration_years"] = dur
        cohort["lesion_load_quotient"] = lesion / dur
    muscles = pd.DataFrame({
        "participant_id": pd.array(np.repeat(ids, len(MUSCLES)), dtype="string"),
        "muscle": pd.array(np.tile(np.array(MUSCLES), n), dtype="string"),
        "mercuri_grade": grades.reshape(-1).astype("int64"),
    })
    return cohort, muscles
