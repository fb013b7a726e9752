"""Build a synthetic cohort on disk: images by station, manifest, covariates and the truth.

Layout of ``out``::

    manifest.csv                  images only (water, fat, in_phase, opposed_phase per station)
    covariates.csv                one row per participant (planted effects, see planted.json)
    manifest_with_labels.csv      manifest.csv plus the truth label rows (bring-your-own labels)
    images/<pid>/station<k>_<channel>.nii.gz      (NIfTI) or
    images/<pid>/station<k>_<channel>/<random>.dcm (DICOM, one classic series each)
    truth/labels.csv              ``labels`` rows (paths relative to ``out``)
    truth/labels/<pid>/station<k>_labels.nii.gz
    truth/participant_metrics.csv, truth/muscle_metrics.csv   (from the true tissue: the
                                  phantoms' noise-free fine grids, pipelines.synth.truth)
    truth/planted.json            every planted parameter (CBP and pain models, ORs,
                                  standardisation, how the truth is defined)

Stations are numbered from the head (station 0 = most superior) and overlap by about
``overlap_fraction`` of their length.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipelines.synth.phantom import DIAGNOSES, Phantom, PhantomSpec, make_phantom
from pipelines.synth.truth import FAT_THRESHOLD, FLOOR_FRACTION, MERCURI_THRESHOLDS, truth_tables
from pipelines.synth.writers import (
    fake_identity,
    station_slices,
    write_dicom_series,
    write_nifti,
)

log = logging.getLogger(__name__)

__all__ = [
    "CbpModel",
    "PainModel",
    "Participant",
    "SynthConfig",
    "SynthResult",
    "build_cohort",
    "cohort_phantom",
    "draw_participant",
]

CHANNEL_ORDER = ("water", "fat", "in_phase", "opposed_phase")
_IMAGE_TYPE = {"water": "W", "fat": "F", "in_phase": "IN_PHASE", "opposed_phase": "OUT_PHASE"}
FORMATS = ("nifti", "dicom")


@dataclass(frozen=True)
class CbpModel:
    """The planted chronic-back-pain model (random-intercept logistic over sites).

    ``logit P(cbp=1) = intercept + u_site + log(or_intermat) z_intermat + log(or_lmm) z_lmm
    + log(or_age_10y) (age - 50) / 10 + log(or_female) female + log(or_osteoarthritis) oa
    + log(or_diabetes) diabetes``, with ``u_site ~ N(0, site_sd^2)`` and ``z_x = (x -
    mean(x)) / (2 SD(x))`` over the cohort (effects per 2 SD).  ``x`` are the TRUE participant
    ``intermat_pct`` and ``lmm_index`` of truth/participant_metrics.csv.
    """

    or_intermat: float = 1.22
    or_lmm: float = 0.87
    intercept: float = -0.85  # about 30 % prevalence at the covariate means
    site_sd: float = 0.3
    or_age_10y: float = 1.10
    or_female: float = 1.25
    or_osteoarthritis: float = 1.50
    or_diabetes: float = 1.10

    def __post_init__(self) -> None:
        for name in ("or_intermat", "or_lmm", "or_age_10y", "or_female", "or_osteoarthritis",
                     "or_diabetes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CBP model: {name} must be a positive odds ratio")
        if self.site_sd < 0:
            raise ValueError("CBP model: site_sd must be >= 0")


@dataclass(frozen=True)
class PainModel:
    """The planted pain-intensity model among participants with CBP.

    ``logit P(NRS >= threshold | cbp=1) = intercept + log(or_intermat) z_intermat +
    log(or_lmm) z_lmm``, with the same ``z`` as :class:`CbpModel` (TRUE ``intermat_pct`` and
    ``lmm_index`` standardised per 2 SD over the whole cohort), so the report's pain-intensity
    model (NRS >= 4 among CBP, exposures per 2 SD of the analysed cohort) estimates these ORs.
    Given the class, NRS is ``round(N(6, 1.5))`` clipped to ``threshold..10`` (high) or
    ``round(N(2, 0.8))`` clipped to ``1..threshold-1`` (low).
    """

    or_intermat: float = 1.5
    or_lmm: float = 0.75
    intercept: float = 0.85  # about 70 % NRS >= 4 at the exposure means
    threshold: int = 4

    def __post_init__(self) -> None:
        for name in ("or_intermat", "or_lmm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"pain model: {name} must be a positive odds ratio, got "
                                 f"{getattr(self, name)!r}")
        if not 2 <= self.threshold <= 10:
            raise ValueError(f"pain model: threshold {self.threshold} must be 2..10 (NRS)")


@dataclass(frozen=True)
class SynthConfig:
    """What ``build_cohort`` makes.

    Parameters
    ----------
    participants : number of participants.
    seed : master seed; the same config gives the same files.
    stations : stations along the body axis (>= 1).
    overlap_fraction : overlap of neighbouring stations as a fraction of a station's length.
    format : ``"nifti"`` (.nii.gz) or ``"dicom"`` (one classic series per station/channel).
    myopathy : a myositis cohort (IMNM/IBM, disease duration) instead of a population one.
    shape, spacing_mm : phantom grid (voxels, mm) before splitting into stations.
    sites : number of study sites.
    nifti_axcodes : voxel-axis orientation the NIfTI files are stored in (world coordinates
        are always correct; ``"LAS"`` is what dcm2niix usually writes).
    noise_fraction : Rician noise sigma / fat signal.
    supersample : sub-voxels per voxel and axis the phantoms' tissue is rendered on (partial
        volume; the truth comes from them).
    cbp : the planted CBP model.
    pain : the planted pain-intensity model (NRS among participants with CBP).
    id_prefix : participant ids are ``<prefix><0001>``.
    workers : processes building participants in parallel (1 = in this process).
    """

    participants: int = 20
    seed: int = 0
    stations: int = 4
    overlap_fraction: float = 0.12
    format: str = "nifti"
    myopathy: bool = False
    shape: tuple[int, int, int] = PhantomSpec.shape
    spacing_mm: tuple[float, float, float] = PhantomSpec.spacing_mm
    sites: int = 4
    nifti_axcodes: str = "LAS"
    noise_fraction: float = 0.02
    supersample: int = PhantomSpec.supersample
    cbp: CbpModel = field(default_factory=CbpModel)
    pain: PainModel = field(default_factory=PainModel)
    id_prefix: str = "P"
    workers: int = 1

    def __post_init__(self) -> None:
        if self.participants < 1:
            raise ValueError(f"participants must be >= 1, got {self.participants}")
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r}: use one of {FORMATS}")
        if self.sites < 1:
            raise ValueError(f"sites must be >= 1, got {self.sites}")
        if self.stations < 1 or self.stations > self.shape[2] // 4:
            raise ValueError(
                f"stations {self.stations} must be 1..{self.shape[2] // 4} for "
                f"{self.shape[2]} slices"
            )
        axc = self.nifti_axcodes.upper()
        pairs = ({"R", "L"}, {"A", "P"}, {"S", "I"})
        if len(axc) != 3 or any(sum(c in p for c in axc) != 1 for p in pairs):
            raise ValueError(f"nifti_axcodes {self.nifti_axcodes!r} is not an orientation "
                             "code such as 'RAS' or 'LAS'")
        station_slices(self.shape[2], self.stations, self.overlap_fraction)
        PhantomSpec(shape=self.shape, spacing_mm=self.spacing_mm,
                    supersample=self.supersample)  # validates the grid


@dataclass(frozen=True)
class Participant:
    """Characteristics of one synthetic participant (before the outcome is drawn)."""

    participant_id: str
    site: str
    age: float
    sex: str
    height_m: float
    weight_kg: float
    bmi: float
    diabetes: int
    dyslipidemia: int
    osteoporosis: int
    osteoarthritis: int
    met_min_week: float
    diagnosis: str | None = None
    disease_duration_years: float | None = None


@dataclass(frozen=True)
class SynthResult:
    """What ``build_cohort`` wrote."""

    out: Path
    manifest: Path
    covariates: Path
    labels_manifest: Path
    manifest_with_labels: Path
    participant_metrics: Path
    muscle_metrics: Path
    planted: Path
    participant_ids: tuple[str, ...]
    files: tuple[Path, ...]
    seconds: float


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def draw_participant(
    rng: np.random.Generator, participant_id: str, site: str, *, myopathy: bool
) -> Participant:
    """Draw one participant's age, sex, anthropometry and comorbidities."""
    sex = "female" if rng.random() < 0.5 else "male"
    if myopathy:
        diagnosis = DIAGNOSES[int(rng.integers(len(DIAGNOSES)))]
        age = float(np.clip(rng.normal(67 if diagnosis == "IBM" else 55, 10), 25, 90))
        duration = float(np.round(rng.uniform(0.5, 20.0), 1))
    else:
        diagnosis, duration = None, None
        age = float(rng.uniform(30, 75))
    mean_h = 1.77 if sex == "male" else 1.64
    height = float(np.clip(rng.normal(mean_h, 0.07), 1.45, 2.05))
    bmi = float(np.clip(np.exp(rng.normal(np.log(26.0) + 0.003 * (age - 50), 0.15)), 17.0, 45.0))
    weight = bmi * height**2
    p_dm = _sigmoid(-3.2 + 0.05 * (age - 50) + 0.12 * (bmi - 26))
    p_lip = _sigmoid(-1.0 + 0.04 * (age - 50) + 0.05 * (bmi - 26))
    p_op = _sigmoid(-3.0 + 0.08 * (age - 50) + (1.2 if sex == "female" else 0.0))
    p_oa = _sigmoid(-2.0 + 0.07 * (age - 50) + 0.06 * (bmi - 26))
    met = float(np.round(np.exp(rng.normal(np.log(1800) - 0.03 * (bmi - 26), 0.7)), 0))
    return Participant(
        participant_id=participant_id,
        site=site,
        age=round(age, 1),
        sex=sex,
        height_m=round(height, 3),
        weight_kg=round(weight, 1),
        bmi=round(weight / round(height, 3) ** 2, 2),
        diabetes=int(rng.random() < p_dm),
        dyslipidemia=int(rng.random() < p_lip),
        osteoporosis=int(rng.random() < p_op),
        osteoarthritis=int(rng.random() < p_oa),
        met_min_week=met,
        diagnosis=diagnosis,
        disease_duration_years=duration,
    )


def _phantom_spec(config: SynthConfig, p: Participant) -> PhantomSpec:
    return PhantomSpec(
        shape=tuple(int(s) for s in config.shape),
        spacing_mm=tuple(float(s) for s in config.spacing_mm),
        age=p.age,
        sex=p.sex,
        bmi=p.bmi,
        height_m=p.height_m,
        myopathy=config.myopathy,
        disease_duration_years=p.disease_duration_years,
        diagnosis=p.diagnosis,
        noise_fraction=config.noise_fraction,
        supersample=config.supersample,
    )


def _station_affine(affine: np.ndarray, start: int) -> np.ndarray:
    a = affine.copy()
    a[:3, 3] = (affine @ np.array([0.0, 0.0, float(start), 1.0]))[:3]
    return a


def _write_participant(
    config: SynthConfig, out: Path, p: Participant, seed: np.random.SeedSequence
) -> dict:
    """Build, write and measure one participant.  Returns manifest rows and truth tables."""
    phantom_seed, file_seed = seed.spawn(2)
    spec = _phantom_spec(config, p)
    ph: Phantom = make_phantom(spec, phantom_seed)
    file_rng = np.random.default_rng(file_seed)
    ranges = station_slices(spec.shape[2], config.stations, config.overlap_fraction)
    # Station 0 is the most superior (acquisitions usually start at the neck).
    ranges = ranges[::-1]
    rows, label_rows, files = [], [], []
    identity = fake_identity(file_rng, age=p.age, sex=p.sex, weight_kg=p.weight_kg,
                             height_m=p.height_m, site=p.site)
    pid = p.participant_id
    for station, (k0, k1) in enumerate(ranges):
        aff = _station_affine(ph.affine, k0)
        for ci, (channel, vol) in enumerate(ph.channels().items()):
            sub = vol[:, :, k0:k1]
            if config.format == "nifti":
                rel = Path("images") / pid / f"station{station}_{channel}.nii.gz"
                write_nifti(out / rel, sub, aff, axcodes=config.nifti_axcodes, integer=True)
                files.append(out / rel)
            else:
                rel = Path("images") / pid / f"station{station}_{channel}"
                files += write_dicom_series(
                    out / rel, sub, aff, identity=identity,
                    study_key=f"{config.seed}/{pid}",
                    series_key=f"{config.seed}/{pid}/{station}/{channel}",
                    series_number=100 * (station + 1) + ci + 1,
                    series_description=f"Dixon neck-to-knee station {station + 1} "
                                       f"{_IMAGE_TYPE[channel]}",
                    image_type=("DERIVED", "PRIMARY", "DIXON", _IMAGE_TYPE[channel]),
                    rng=file_rng,
                )
            rows.append({"participant_id": pid, "site": p.site, "station": station,
                         "channel": channel, "path": rel.as_posix()})
        rel = Path("truth") / "labels" / pid / f"station{station}_labels.nii.gz"
        labels_axcodes = config.nifti_axcodes if config.format == "nifti" else "RAS"
        write_nifti(out / rel, ph.labels[:, :, k0:k1], aff, axcodes=labels_axcodes)
        files.append(out / rel)
        label_rows.append({"participant_id": pid, "site": p.site, "station": station,
                           "channel": "labels", "path": rel.as_posix(), "label_map": ""})
    muscle_df, part = truth_tables(
        ph.truth, participant_id=pid, bmi=p.bmi,
        disease_duration_years=p.disease_duration_years,
    )
    part["planted_intermat_fraction_mean"] = float(np.mean(list(
        ph.muscle_intermat_target.values())))
    return {"rows": rows, "label_rows": label_rows, "muscles": muscle_df, "participant": part,
            "files": files}


def _draw_cbp(
    config: SynthConfig, people: list[Participant], parts: list[dict], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw CBP (0/1) and pain NRS from the planted models; return them and the records of
    both (``{"cbp": ..., "pain": ...}``)."""
    m = config.cbp
    im = np.array([p["intermat_pct"] for p in parts], dtype=float)
    lmm = np.array([p["lmm_index"] for p in parts], dtype=float)

    def std2(x):
        sd = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
        mean = float(np.mean(x))
        return ((x - mean) / (2 * sd) if sd > 0 else np.zeros_like(x)), mean, sd

    z_im, im_mean, im_sd = std2(im)
    z_lmm, lmm_mean, lmm_sd = std2(lmm)
    sites = sorted({p.site for p in people})
    u = {s: float(rng.normal(0, m.site_sd)) for s in sites}
    age = np.array([p.age for p in people])
    female = np.array([p.sex == "female" for p in people], dtype=float)
    oa = np.array([p.osteoarthritis for p in people], dtype=float)
    dm = np.array([p.diabetes for p in people], dtype=float)
    eta = (
        m.intercept
        + np.array([u[p.site] for p in people])
        + np.log(m.or_intermat) * z_im
        + np.log(m.or_lmm) * z_lmm
        + np.log(m.or_age_10y) * (age - 50.0) / 10.0
        + np.log(m.or_female) * female
        + np.log(m.or_osteoarthritis) * oa
        + np.log(m.or_diabetes) * dm
    )
    prob = _sigmoid(eta)
    cbp = (rng.random(len(people)) < prob).astype(int)
    pain, pain_record = _draw_pain(config.pain, cbp, z_im, z_lmm, rng)
    record = {
        "model": "logit P(cbp=1) = intercept + u_site + sum(log(OR) * x)",
        **asdict(m),
        "exposures": {
            "intermat_pct": {"mean": im_mean, "sd": im_sd, "scaling": "per 2 SD",
                             "source": "truth/participant_metrics.csv intermat_pct"},
            "lmm_index": {"mean": lmm_mean, "sd": lmm_sd, "scaling": "per 2 SD",
                          "source": "truth/participant_metrics.csv lmm_index (cm3 per kg/m2)"},
        },
        "covariate_coding": {
            "age": "(age - 50) / 10, per 10 years",
            "female": "sex == female",
            "osteoarthritis": "0/1",
            "diabetes": "0/1",
        },
        "site_intercepts": u,
        "observed_prevalence": float(cbp.mean()),
        "mean_probability": float(prob.mean()),
        "pain_nrs": "cbp=1: from the pain model (see 'pain'); cbp=0: missing",
    }
    return cbp, pain, {"cbp": record, "pain": pain_record}


def _draw_pain(m: PainModel, cbp: np.ndarray, z_im: np.ndarray, z_lmm: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """NRS (NaN without CBP) from the planted pain model, and its record."""
    eta = m.intercept + np.log(m.or_intermat) * z_im + np.log(m.or_lmm) * z_lmm
    prob = _sigmoid(eta)
    high = rng.random(cbp.size) < prob
    hi_nrs = np.clip(np.round(rng.normal(6.0, 1.5, cbp.size)), m.threshold, 10)
    lo_nrs = np.clip(np.round(rng.normal(2.0, 0.8, cbp.size)), 1, m.threshold - 1)
    pain = np.where(cbp == 1, np.where(high, hi_nrs, lo_nrs), np.nan)
    with_cbp = cbp == 1
    record = {
        "model": f"among cbp=1: logit P(pain_nrs >= {m.threshold}) = intercept "
                 "+ log(or_intermat) z_intermat + log(or_lmm) z_lmm",
        **asdict(m),
        "exposures": "the z of the CBP model (TRUE intermat_pct and lmm_index per 2 SD over "
                     "the whole cohort)",
        "nrs_given_class": f"high: round(N(6, 1.5)) clipped to {m.threshold}..10; low: "
                           f"round(N(2, 0.8)) clipped to 1..{m.threshold - 1}",
        "observed_high_fraction": (float(np.mean(pain[with_cbp] >= m.threshold))
                                   if with_cbp.any() else None),
    }
    return pain, record


def _plan(
    config: SynthConfig,
) -> tuple[list[Participant], list[np.random.SeedSequence], np.random.SeedSequence]:
    """The participants of a config and their (fresh, unspawned) seeds."""
    root = np.random.SeedSequence(config.seed)
    people_seed, outcome_seed, *participant_seeds = root.spawn(2 + config.participants)
    rng = np.random.default_rng(people_seed)
    width = max(4, len(str(config.participants)))
    site_names = [f"site{chr(ord('A') + i)}" if i < 26 else f"site{i + 1}"
                  for i in range(config.sites)]
    people = [
        draw_participant(rng, f"{config.id_prefix}{i + 1:0{width}d}",
                         site_names[int(rng.integers(config.sites))], myopathy=config.myopathy)
        for i in range(config.participants)
    ]
    return people, participant_seeds, outcome_seed


def cohort_phantom(config: SynthConfig, index: int) -> tuple[Participant, Phantom]:
    """Rebuild, in memory, participant ``index`` (0-based) of the cohort ``config`` describes:
    the same arrays ``build_cohort`` split into station files (e.g. to train on the whole
    volume or to check a reader's geometry)."""
    people, seeds, _ = _plan(config)
    if not 0 <= index < len(people):
        raise ValueError(f"participant index {index} outside 0..{len(people) - 1}")
    phantom_seed, _ = seeds[index].spawn(2)
    return people[index], make_phantom(_phantom_spec(config, people[index]), phantom_seed)


def build_cohort(config: SynthConfig, out: Path) -> SynthResult:
    """Write a synthetic cohort into ``out`` (created; existing files are overwritten).

    Parameters
    ----------
    config : what to build.
    out : cohort folder.

    Returns
    -------
    SynthResult
        paths of the tables written and of every image/label file.
    """
    import pandas as pd

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    people, participant_seeds, outcome_seed = _plan(config)
    if config.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(config.workers) as pool:
            results = list(pool.map(_write_participant, [config] * len(people),
                                    [out] * len(people), people, participant_seeds))
    else:
        results = [_write_participant(config, out, p, s)
                   for p, s in zip(people, participant_seeds, strict=True)]
    parts = [r["participant"] for r in results]
    cbp, pain, record = _draw_cbp(config, people, parts, np.random.default_rng(outcome_seed))

    manifest = out / "manifest.csv"
    pd.DataFrame([row for r in results for row in r["rows"]]).to_csv(manifest, index=False)
    truth = out / "truth"
    truth.mkdir(exist_ok=True)
    labels_manifest = truth / "labels.csv"
    label_rows = [row for r in results for row in r["label_rows"]]
    pd.DataFrame(label_rows).to_csv(labels_manifest, index=False)
    with_labels = out / "manifest_with_labels.csv"
    all_rows = []
    for r in results:
        all_rows += [{**row, "label_map": ""} for row in r["rows"]] + r["label_rows"]
    pd.DataFrame(all_rows).to_csv(with_labels, index=False)

    cov_rows = []
    for p, c, nrs in zip(people, cbp, pain, strict=True):
        row = {k: v for k, v in asdict(p).items()
               if k not in ("diagnosis", "disease_duration_years")}
        row["cbp"] = int(c)
        row["pain_nrs"] = None if np.isnan(nrs) else int(nrs)
        if config.myopathy:
            row["diagnosis"] = p.diagnosis
            row["disease_duration_years"] = p.disease_duration_years
        cov_rows.append(row)
    covariates = out / "covariates.csv"
    cov = pd.DataFrame(cov_rows)
    cov["pain_nrs"] = cov["pain_nrs"].astype("Int64")
    cov.to_csv(covariates, index=False)

    participant_metrics = truth / "participant_metrics.csv"
    pd.DataFrame(parts).to_csv(participant_metrics, index=False)
    muscle_metrics = truth / "muscle_metrics.csv"
    pd.concat([r["muscles"] for r in results], ignore_index=True).to_csv(
        muscle_metrics, index=False)
    planted = truth / "planted.json"
    planted.write_text(json.dumps({
        "config": {
            "participants": config.participants, "seed": config.seed,
            "stations": config.stations, "overlap_fraction": config.overlap_fraction,
            "format": config.format, "myopathy": config.myopathy,
            "shape": list(config.shape), "spacing_mm": list(config.spacing_mm),
            "sites": config.sites, "nifti_axcodes": config.nifti_axcodes,
            "noise_fraction": config.noise_fraction, "supersample": config.supersample,
        },
        **record,
        "metric_definitions": {
            "floor_fraction": FLOOR_FRACTION, "fat_threshold": FAT_THRESHOLD,
            "mercuri_thresholds": list(MERCURI_THRESHOLDS),
            "lmm_index": "lmm_cm3 / bmi",
        },
        "truth": {
            "source": "the noise-free fat fraction of every sub-voxel of the phantom's fine "
                      "grid (pipelines.synth.truth.truth_tables), not the image voxels",
            "supersample": config.supersample,
            "subvoxel": "a voxel split into supersample^3 cells; InterMAT: a cell with "
                        "ff >= fat_threshold; volumes: cells x cell volume",
            "n_voxels": "true volume / voxel volume, rounded; n_subvoxels: true cells",
            "labels": "truth/labels: per voxel, the label held by most of its cells "
                      "(background = any non-muscle tissue); a tie goes to the label at the "
                      "voxel's centre point when it is tied, else to the lowest tied label",
        },
    }, indent=2, default=float))
    files = tuple(f for r in results for f in r["files"])
    seconds = time.perf_counter() - t0
    log.info("synth: %d participants, %d files in %.1f s", len(people), len(files), seconds)
    return SynthResult(
        out=out, manifest=manifest, covariates=covariates, labels_manifest=labels_manifest,
        manifest_with_labels=with_labels, participant_metrics=participant_metrics,
        muscle_metrics=muscle_metrics, planted=planted,
        participant_ids=tuple(p.participant_id for p in people), files=files, seconds=seconds,
    )
