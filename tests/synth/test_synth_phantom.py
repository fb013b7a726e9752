"""The in-memory phantom: arrays, geometry, anatomy, fat model, noise, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.synth import PhantomSpec, make_phantom
from pipelines.synth.phantom import FASCIA
from pipelines.synth.truth import truth_metrics
from schemas.vocabulary import MUSCLE_BY_LABEL, MUSCLES


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(age=55, sex="male", bmi=27), seed=3)


def _world_centroid(ph, label):
    ijk = np.argwhere(ph.labels == label).mean(axis=0)
    return (ph.affine @ np.append(ijk, 1.0))[:3]


def test_arrays_dtypes_and_affine(phantom):
    spec = phantom.spec
    for name in ("water", "fat", "in_phase", "opposed_phase", "water_true", "fat_true"):
        arr = getattr(phantom, name)
        assert arr.shape == spec.shape and arr.dtype == np.float32, name
        assert np.isfinite(arr).all() and (arr >= 0).all(), name
    assert phantom.labels.dtype == np.uint8 and phantom.labels.shape == spec.shape
    assert set(np.unique(phantom.labels)) == set(range(19))
    a = phantom.affine
    assert a.shape == (4, 4)
    assert np.allclose(np.diag(a)[:3], spec.spacing_mm)  # RAS+: positive diagonal
    assert np.allclose(a[:3, :3], np.diag(spec.spacing_mm))


def test_channels_are_consistent_with_the_truth(phantom):
    w, f = phantom.water_true, phantom.fat_true
    body = (w + f) > 200
    sigma = phantom.spec.noise_fraction * phantom.spec.signal_scale
    # High-SNR voxels: the Rician magnitude is close to the true value.
    assert abs(float(np.median(phantom.in_phase[body] - (w + f)[body]))) < sigma
    assert abs(float(np.median(phantom.opposed_phase[body] - np.abs(w - f)[body]))) < sigma
    # Background (air): Rayleigh noise with mean sigma * sqrt(pi / 2).
    air = (w + f) == 0
    assert air.sum() > 1000
    assert phantom.water[air].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.05)


def test_every_muscle_is_thick_enough(phantom):
    """At least ~4 voxels across (a point 2 voxels deep) at the default spacing."""
    for m in MUSCLES:
        mask = phantom.labels == m.label
        depth = ndimage.distance_transform_edt(mask).max()
        assert depth >= 2.0, f"{m.name}: only {depth:.1f} voxels deep"
        assert mask.sum() > 200, m.name


def test_touching_muscles_are_separated_by_fat(phantom):
    lab = phantom.labels
    for axis in range(3):
        a = np.moveaxis(lab, axis, 0)
        lo, hi = a[:-1], a[1:]
        touching = (lo > 0) & (hi > 0) & (lo != hi)
        assert not touching.any(), f"muscles touch along axis {axis}"
    # The separating planes carry a fat signal.
    fascia = phantom.tissue == FASCIA
    assert fascia.sum() > 100
    ff = phantom.fat_true[fascia] / (phantom.water_true[fascia] + phantom.fat_true[fascia])
    assert ff.min() > 0.8


def test_anatomical_placement(phantom):
    c = {MUSCLE_BY_LABEL[m.label].name: _world_centroid(phantom, m.label) for m in MUSCLES}
    for m in MUSCLES:
        x = c[m.name][0]
        # RAS: left muscles at negative x, right at positive x.
        assert (x < 0) == (m.side == "left"), m.name
    z = {base: c[f"{base}_left"][2] for base in
         ("autochthon", "iliopsoas", "gluteus_maximus", "gluteus_medius",
          "quadriceps_femoris", "thigh_posterior_compartment", "sartorius")}
    assert z["autochthon"] > z["iliopsoas"] > z["quadriceps_femoris"]
    assert z["gluteus_medius"] > z["quadriceps_femoris"]
    assert z["gluteus_maximus"] > z["thigh_posterior_compartment"]
    # The back muscles lie posterior to the psoas, the quadriceps anterior to the hamstrings.
    assert c["autochthon_left"][1] < c["iliopsoas_left"][1]
    assert c["quadriceps_femoris_left"][1] > c["thigh_posterior_compartment_left"][1]


def test_seed_determinism_and_variation():
    spec = PhantomSpec(shape=(42, 28, 64), spacing_mm=(12.0, 12.0, 15.0))
    a, b, c = make_phantom(spec, 5), make_phantom(spec, 5), make_phantom(spec, 6)
    for name in ("water", "fat", "labels", "water_true"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.labels, c.labels)  # shapes vary between participants
    assert not np.array_equal(a.water, c.water)


def _participant_metrics(spec, seed):
    ph = make_phantom(spec, seed)
    return truth_metrics(ph.water_true, ph.fat_true, ph.labels, ph.spacing_mm,
                         participant_id="X", bmi=spec.bmi,
                         disease_duration_years=spec.disease_duration_years)


def test_fat_rises_with_age_and_bmi_and_lean_ff_is_plausible():
    young = PhantomSpec(age=30, sex="male", bmi=21)
    old = PhantomSpec(age=75, sex="male", bmi=34)
    my, py = _participant_metrics(young, 1)
    mo, po = _participant_metrics(old, 1)
    assert po["intermat_pct"] > 2 * py["intermat_pct"]
    assert mo["ff_lean_mean_pct"].mean() > my["ff_lean_mean_pct"].mean()
    for df in (my, mo):
        assert df["ff_lean_mean_pct"].between(1.5, 9.0).all()


def test_muscle_size_follows_sex():
    f_m, f_p = _participant_metrics(PhantomSpec(age=50, sex="female", bmi=25), 2)
    m_m, m_p = _participant_metrics(PhantomSpec(age=50, sex="male", bmi=25), 2)
    assert m_p["lmm_cm3"] > 1.1 * f_p["lmm_cm3"]


def test_myopathy_reaches_every_mercuri_grade():
    grades = set()
    for i, (dur, diag) in enumerate([(1, "IBM"), (4, "IMNM"), (8, "IBM"), (12, "IMNM"),
                                     (18, "IBM"), (20, "IMNM")]):
        spec = PhantomSpec(shape=(42, 28, 64), spacing_mm=(12.0, 12.0, 15.0), age=60,
                           bmi=26, myopathy=True, disease_duration_years=dur, diagnosis=diag)
        m, p = _participant_metrics(spec, 10 + i)
        grades |= set(m["mercuri_grade"])
        assert 0 <= p["lesion_load_pct"] <= 100
    assert grades == {0, 1, 2, 3, 4}


def test_planted_intermat_is_what_the_truth_measures():
    spec = PhantomSpec(age=60, sex="female", bmi=30)
    ph = make_phantom(spec, 4)
    m, _ = truth_metrics(ph.water_true, ph.fat_true, ph.labels, ph.spacing_mm,
                         participant_id="X", bmi=30)
    for row in m.itertuples():
        target = 100 * ph.muscle_intermat_target[row.muscle]
        assert row.intermat_pct == pytest.approx(target, abs=1.0), row.muscle


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sex="x"), "sex"),
        (dict(age=-1), "age"),
        (dict(bmi=5), "BMI"),
        (dict(shape=(4, 4, 4)), "shape"),
        (dict(spacing_mm=(1, 0, 1)), "spacing"),
        (dict(myopathy=True), "disease_duration_years"),
        (dict(myopathy=True, disease_duration_years=3, diagnosis="DM"), "diagnosis"),
    ],
)
def test_spec_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhantomSpec(**kwargs)
