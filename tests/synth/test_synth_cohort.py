"""build_cohort: files open in nibabel/pydicom with the phantom's geometry; tables validate;
the same seed gives the same cohort; the planted CBP model is what it says."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from pipelines.synth import SynthConfig, build_cohort, cohort_phantom
from pipelines.synth.cohort import CbpModel, PainModel, _draw_cbp, draw_participant
from pipelines.synth.writers import station_slices
from schemas.covariates import load_covariates
from schemas.manifest import load_manifest


def _world_to_phantom(ph, world_ras):
    """Integer voxel indices of RAS world points in the phantom grid."""
    ijk = (np.linalg.inv(ph.affine) @ np.c_[world_ras, np.ones(len(world_ras))].T)[:3].T
    assert np.allclose(ijk, np.round(ijk), atol=1e-3), "station grid is not the phantom grid"
    return np.round(ijk).astype(int)


def test_station_slices_overlap_and_cover():
    ranges = station_slices(160, 4, 0.12)
    assert ranges[0][0] == 0 and ranges[-1][1] == 160
    lengths = {b - a for a, b in ranges}
    assert len(lengths) == 1
    length = lengths.pop()
    for (_, a1), (b0, _) in zip(ranges, ranges[1:], strict=False):
        overlap = a1 - b0
        assert 0.08 * length <= overlap <= 0.16 * length
    assert station_slices(50, 1, 0.1) == [(0, 50)]
    with pytest.raises(ValueError):
        station_slices(10, 0, 0.1)


def test_nifti_files_have_the_phantom_geometry(nifti_cohort):
    config, result = nifti_cohort
    manifest = load_manifest(result.manifest)
    assert manifest.participant_ids == result.participant_ids
    rng = np.random.default_rng(0)
    for index, pid in enumerate(result.participant_ids):
        _, ph = cohort_phantom(config, index)
        parts = manifest.participants[index]
        assert parts.stations == tuple(range(config.stations))
        covered = np.zeros(ph.labels.shape[2], dtype=bool)
        top = []
        for station in parts.stations:
            for channel in ("water", "fat", "in_phase", "opposed_phase"):
                img = nib.load(parts.get(station, channel).path)
                assert "".join(nib.aff2axcodes(img.affine)) == config.nifti_axcodes
                data = np.asarray(img.dataobj)
                idx = np.argwhere(np.ones(data.shape, bool))
                idx = idx[rng.choice(len(idx), 500, replace=False)]
                world = nib.affines.apply_affine(img.affine, idx)
                pijk = _world_to_phantom(ph, world)
                expect = getattr(ph, channel)[tuple(pijk.T)]
                got = data[tuple(idx.T)]
                assert np.abs(got - expect).max() <= 0.51, (pid, station, channel)
            lab = nib.load(result.out / "truth" / "labels" / pid / f"station{station}_labels.nii.gz")
            ldata = np.asarray(lab.dataobj)
            idx = np.argwhere(np.ones(ldata.shape, bool))
            pijk = _world_to_phantom(ph, nib.affines.apply_affine(lab.affine, idx))
            assert np.array_equal(ldata[tuple(idx.T)], ph.labels[tuple(pijk.T)])
            covered[np.unique(pijk[:, 2])] = True
            top.append(pijk[:, 2].max())
        assert covered.all(), "stations do not cover the body"
        assert top == sorted(top, reverse=True), "station 0 must be the most superior"


def _read_series(folder: Path):
    datasets = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    assert datasets
    return datasets


def test_dicom_series_have_the_phantom_geometry_and_fake_identity(dicom_cohort):
    config, result = dicom_cohort
    manifest = load_manifest(result.manifest)
    series_uids, sop_uids = set(), set()
    for index, parts in enumerate(manifest):
        _, ph = cohort_phantom(config, index)
        study_uids = set()
        for ref in parts.images:
            assert ref.path.is_dir()
            datasets = _read_series(ref.path)
            names = [p.name for p in ref.path.glob("*.dcm")]
            # Shuffled names: file order says nothing about slice order.
            by_name = [d.InstanceNumber for d in sorted(datasets, key=lambda d: d.filename)]
            assert by_name != sorted(by_name) or len(names) < 3
            series = {d.SeriesInstanceUID for d in datasets}
            assert len(series) == 1 and not (series & series_uids)
            series_uids |= series
            study_uids |= {d.StudyInstanceUID for d in datasets}
            for d in datasets:
                assert d.SOPInstanceUID not in sop_uids
                sop_uids.add(d.SOPInstanceUID)
                assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
                assert str(d.PatientName) and d.PatientID.startswith("MRN")
                assert len(d.PatientBirthDate) == 8 and d.InstitutionName
                assert d.AccessionNumber and str(d.ReferringPhysicianName)
                assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
                iop = np.array(d.ImageOrientationPatient, dtype=float)
                row_dir, col_dir = iop[:3], iop[3:]
                dr, dc = (float(v) for v in d.PixelSpacing)
                ipp = np.array(d.ImagePositionPatient, dtype=float)
                assert float(d.SliceThickness) == pytest.approx(ph.spacing_mm[2])
                pix = d.pixel_array.astype(float) * float(d.RescaleSlope) + float(
                    d.RescaleIntercept)
                assert pix.shape == (d.Rows, d.Columns)
                r, c = np.meshgrid(np.arange(d.Rows), np.arange(d.Columns), indexing="ij")
                lps = (ipp[None, None, :] + c[..., None] * dc * row_dir
                       + r[..., None] * dr * col_dir).reshape(-1, 3)
                ras = lps * np.array([-1.0, -1.0, 1.0])  # DICOM LPS -> RAS
                pijk = _world_to_phantom(ph, ras)
                expect = getattr(ph, ref.channel)[tuple(pijk.T)].reshape(pix.shape)
                assert np.abs(pix - expect).max() <= float(d.RescaleSlope), ref.path
        assert len(study_uids) == 1


def test_tables_validate_and_describe_the_cohort(nifti_cohort):
    config, result = nifti_cohort
    cov = load_covariates(result.covariates)
    assert tuple(cov.index) == result.participant_ids
    for col in ("site", "age", "sex", "height_m", "weight_kg", "bmi", "diabetes",
                "dyslipidemia", "osteoporosis", "osteoarthritis", "met_min_week", "cbp",
                "pain_nrs"):
        assert col in cov.columns, col
    assert "diagnosis" not in cov.columns  # population cohort
    assert cov.loc[cov.cbp == 0, "pain_nrs"].isna().all()
    assert cov.loc[cov.cbp == 1, "pain_nrs"].between(1, 10).all()
    assert np.allclose(cov.bmi, cov.weight_kg / cov.height_m**2, atol=0.05)
    full = load_manifest(result.manifest_with_labels)
    for p in full:
        assert p.has_labels
        for s in p.stations:
            ref = p.get(s, "labels")
            assert ref.path.exists() and ref.label_map.source == "myocohort"
    labels_rows = pd.read_csv(result.labels_manifest, dtype=str, keep_default_na=False)
    assert set(labels_rows.channel) == {"labels"}
    assert len(labels_rows) == config.participants * config.stations
    pm = pd.read_csv(result.participant_metrics)
    mm = pd.read_csv(result.muscle_metrics)
    assert list(pm.participant_id) == list(result.participant_ids)
    assert len(mm) == 18 * config.participants
    planted = json.loads(result.planted.read_text())
    assert planted["cbp"]["or_intermat"] == 1.22 and planted["cbp"]["or_lmm"] == 0.87
    assert planted["cbp"]["exposures"]["intermat_pct"]["mean"] == pytest.approx(
        pm.intermat_pct.mean())


def test_myopathy_covariates(dicom_cohort):
    config, result = dicom_cohort
    cov = load_covariates(result.covariates)
    assert set(cov.diagnosis) <= {"IMNM", "IBM"}
    assert (cov.disease_duration_years > 0).all()
    pm = pd.read_csv(result.participant_metrics)
    assert np.allclose(pm.lesion_load_quotient,
                       pm.lesion_load_pct / cov.disease_duration_years.to_numpy())


def test_same_seed_same_cohort(tmp_path):
    config = SynthConfig(participants=2, seed=3, stations=2, shape=(30, 20, 40),
                         spacing_mm=(16.0, 16.0, 22.0))
    a = build_cohort(config, tmp_path / "a")
    b = build_cohort(config, tmp_path / "b")
    c = build_cohort(SynthConfig(**{**config.__dict__, "seed": 4}), tmp_path / "c")
    for name in ("manifest.csv", "covariates.csv", "truth/participant_metrics.csv",
                 "truth/muscle_metrics.csv", "truth/labels.csv", "truth/planted.json"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes(), name
    for fa, fb in zip(a.files, b.files, strict=True):
        assert np.array_equal(np.asarray(nib.load(fa).dataobj), np.asarray(nib.load(fb).dataobj))
    assert (a.out / "covariates.csv").read_bytes() != (c.out / "covariates.csv").read_bytes()


def test_planted_odds_ratios_are_recovered():
    """Draw CBP for many participants with known exposures; a logistic fit recovers the
    planted per-2-SD odds ratios (no site variance so a plain GLM is the true model)."""
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(1)
    n = 20000
    config = SynthConfig(participants=1, cbp=CbpModel(site_sd=0.0, or_intermat=1.5,
                                                      or_lmm=0.7))
    people = [draw_participant(rng, f"P{i}", "siteA", myopathy=False) for i in range(n)]
    parts = [{"intermat_pct": float(rng.gamma(2.0, 2.5)),
              "lmm_index": float(rng.normal(300, 40))} for _ in range(n)]
    cbp, pain, record = _draw_cbp(config, people, parts, np.random.default_rng(2))
    im = np.array([p["intermat_pct"] for p in parts])
    lmm = np.array([p["lmm_index"] for p in parts])
    X = np.column_stack([
        (im - im.mean()) / (2 * im.std(ddof=1)),
        (lmm - lmm.mean()) / (2 * lmm.std(ddof=1)),
        (np.array([p.age for p in people]) - 50) / 10,
        np.array([p.sex == "female" for p in people], float),
        np.array([p.osteoarthritis for p in people], float),
        np.array([p.diabetes for p in people], float),
    ])
    fit = sm.Logit(cbp, sm.add_constant(X)).fit(disp=0)
    ci = np.exp(np.asarray(fit.conf_int()))  # rows: const, intermat, lmm, ...
    assert ci[1, 0] < 1.5 < ci[1, 1]
    assert ci[2, 0] < 0.7 < ci[2, 1]
    assert ci[1, 0] > 1.2 and ci[2, 1] < 0.85  # precise enough to tell the effects apart
    assert np.isnan(pain[cbp == 0]).all() and (pain[cbp == 1] >= 1).all()
    assert record["cbp"]["exposures"]["intermat_pct"]["mean"] == pytest.approx(im.mean())


def _simulated_cohort(n: int, config: SynthConfig, seed: int) -> pd.DataFrame:
    """Covariates of ``n`` synth participants (no images) with plausible true exposures, and
    CBP and pain drawn by the cohort's own planted models."""
    from dataclasses import asdict

    rng = np.random.default_rng(seed)
    people = [draw_participant(rng, f"P{i:05d}", f"site{'ABCD'[i % 4]}", myopathy=False)
              for i in range(n)]
    parts = [{"intermat_pct": float(rng.gamma(2.0, 2.5)),
              "lmm_index": float(rng.normal(230 if p.sex == "male" else 170, 30))}
             for p in people]
    cbp, pain, record = _draw_cbp(config, people, parts, np.random.default_rng(seed + 1))
    cohort = pd.DataFrame([{**asdict(p), **x} for p, x in zip(people, parts, strict=True)])
    cohort["cbp"] = cbp
    cohort["pain_nrs"] = pain
    cohort.attrs["planted"] = record
    return cohort


@pytest.mark.slow
def test_planted_pain_odds_ratios_are_recovered_by_the_pain_model():
    """The report's pain-intensity model (NRS >= 4 among participants with CBP, adjusted as
    the main model, exposures per 2 SD of the whole analysed cohort) recovers the planted
    pain ORs on a large cohort drawn by the synth models."""
    from dataclasses import replace

    from pipelines.stats import ModelSpec, cohort_scaling, fit_model

    pain = PainModel(or_intermat=1.6, or_lmm=0.7)
    config = SynthConfig(participants=1, cbp=CbpModel(site_sd=0.3), pain=pain)
    cohort = _simulated_cohort(12000, config, seed=5)
    record = cohort.attrs["planted"]["pain"]
    assert record["or_intermat"] == 1.6 and record["or_lmm"] == 0.7
    with_cbp = cohort[cohort.cbp == 1]
    assert with_cbp.pain_nrs.between(1, 10).all() and cohort[cohort.cbp == 0].pain_nrs.isna().all()
    assert 0.55 < (with_cbp.pain_nrs >= 4).mean() < 0.85
    main = ModelSpec()
    scaling = cohort_scaling(cohort, main)
    sub = with_cbp.copy()
    sub["pain_high"] = (sub["pain_nrs"] >= 4).astype(float)
    fit = fit_model(sub, replace(main, outcome="pain_high"), scaling=scaling)
    terms = {t.term: t for t in fit.terms}
    im, lmm = terms["intermat_pct"], terms["lmm_index"]
    assert im.ci_low < 1.6 < im.ci_high, (im.or_, im.ci_low, im.ci_high)
    assert lmm.ci_low < 0.7 < lmm.ci_high, (lmm.or_, lmm.ci_low, lmm.ci_high)
    assert im.ci_low > 1.25 and lmm.ci_high < 0.85  # a real effect, told apart from null
    # Nothing else was planted: the adjusters' ORs include 1.
    for name in ("age", "diabetes", "osteoarthritis"):
        assert terms[name].ci_low < 1.0 < terms[name].ci_high, name


def test_pain_model_refuses_bad_values():
    with pytest.raises(ValueError, match="or_intermat"):
        PainModel(or_intermat=0.0)
    with pytest.raises(ValueError, match="threshold"):
        PainModel(threshold=11)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="format"):
        SynthConfig(format="png")
    with pytest.raises(ValueError, match="stations"):
        SynthConfig(stations=100)
    with pytest.raises(ValueError, match="nifti_axcodes"):
        SynthConfig(nifti_axcodes="RRS")
    with pytest.raises(ValueError, match="participants"):
        SynthConfig(participants=0)


def test_dicom_series_per_station_and_channel(dicom_cohort):
    config, result = dicom_cohort
    counts = defaultdict(int)
    for row in pd.read_csv(result.manifest).itertuples():
        counts[row.participant_id] += 1
        assert (result.out / row.path).is_dir()
    assert set(counts.values()) == {config.stations * 4}


def test_parallel_workers_write_the_same_cohort(tmp_path):
    config = SynthConfig(participants=2, seed=9, stations=2, shape=(24, 18, 32),
                         spacing_mm=(20.0, 20.0, 28.0))
    serial = build_cohort(config, tmp_path / "serial")
    parallel = build_cohort(SynthConfig(**{**config.__dict__, "workers": 2}), tmp_path / "par")
    for name in ("manifest.csv", "covariates.csv", "truth/muscle_metrics.csv"):
        assert (serial.out / name).read_bytes() == (parallel.out / name).read_bytes(), name
