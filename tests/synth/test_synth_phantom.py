"""The in-memory phantom: arrays, geometry, anatomy, continuous fat model, partial volume,
noise, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.synth import PhantomSpec, make_phantom
from pipelines.synth.phantom import FASCIA
from pipelines.synth.truth import truth_tables
from schemas.vocabulary import MUSCLE_BY_LABEL, MUSCLE_BY_NAME, MUSCLES

#: A coarse grid for tests that need many phantoms (anatomy is defined in mm).
COARSE = dict(shape=(42, 28, 64), spacing_mm=(12.0, 12.0, 15.0))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(age=55, sex="male", bmi=27), seed=3, keep_fine=True)


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


def test_touching_muscles_are_separated_by_fascia_on_the_fine_grid(phantom):
    fine = phantom.fine
    lab = fine.labels
    for axis in range(3):
        a = np.moveaxis(lab, axis, 0)
        lo, hi = a[:-1], a[1:]
        touching = (lo > 0) & (hi > 0) & (lo != hi)
        assert not touching.any(), f"muscles touch along axis {axis} of the fine grid"
    fascia = fine.tissue == FASCIA
    assert fascia.sum() > 1000
    assert fine.ff[fascia].min() > 0.8
    # Through partial volume the fascia shows in the images: voxels labelled with a muscle
    # next to a voxel of another muscle are fattier than the muscles' interiors.
    ff = phantom.fat_true / np.maximum(phantom.water_true + phantom.fat_true, 1e-6)
    vox = phantom.labels
    edge = np.zeros(vox.shape, bool)
    for axis in range(3):
        a = np.moveaxis(vox, axis, 0)
        e = np.moveaxis(edge, axis, 0)
        other = (a[:-1] > 0) & (a[1:] > 0) & (a[:-1] != a[1:])
        e[:-1] |= other
        e[1:] |= other
    interior = ndimage.binary_erosion(vox > 0, iterations=1) & ~edge
    assert edge.sum() > 500
    assert np.median(ff[edge]) > np.median(ff[interior]) + 0.05


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
    spec = PhantomSpec(**COARSE)
    a, b, c = make_phantom(spec, 5), make_phantom(spec, 5), make_phantom(spec, 6)
    for name in ("water", "fat", "labels", "water_true"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.labels, c.labels)  # shapes vary between participants
    assert not np.array_equal(a.water, c.water)


def _truth(spec, seed):
    ph = make_phantom(spec, seed)
    return truth_tables(ph.truth, participant_id="X", bmi=spec.bmi,
                        disease_duration_years=spec.disease_duration_years)


def test_fat_rises_with_age_and_bmi_and_lean_ff_is_plausible():
    young = PhantomSpec(age=30, sex="male", bmi=21)
    old = PhantomSpec(age=75, sex="male", bmi=34)
    my, py = _truth(young, 1)
    mo, po = _truth(old, 1)
    assert po["intermat_pct"] > 2 * py["intermat_pct"]
    assert mo["ff_lean_mean_pct"].mean() > my["ff_lean_mean_pct"].mean()
    assert mo["ff_mean_pct"].mean() > my["ff_mean_pct"].mean()
    for df in (my, mo):
        assert df["ff_lean_mean_pct"].between(1.5, 9.0).all()
    assert my["ff_mean_pct"].between(1.5, 8.0).all()  # a young lean man: 2-8 % muscle fat


def test_muscle_size_follows_sex():
    f_m, f_p = _truth(PhantomSpec(age=50, sex="female", bmi=25), 2)
    m_m, m_p = _truth(PhantomSpec(age=50, sex="male", bmi=25), 2)
    assert m_p["lmm_cm3"] > 1.1 * f_p["lmm_cm3"]


def test_myopathy_reaches_every_mercuri_grade():
    grades = set()
    for i, (dur, diag) in enumerate([(1, "IBM"), (4, "IMNM"), (8, "IBM"), (12, "IMNM"),
                                     (18, "IBM"), (20, "IMNM")]):
        spec = PhantomSpec(**COARSE, age=60, bmi=26, myopathy=True,
                           disease_duration_years=dur, diagnosis=diag)
        m, p = _truth(spec, 10 + i)
        grades |= set(m["mercuri_grade"])
        assert 0 <= p["lesion_load_pct"] <= 100
    assert grades == {0, 1, 2, 3, 4}


def test_planted_islands_are_what_the_truth_measures():
    """Without myopathy every fat sub-voxel is an island: the true InterMAT of each muscle is
    its planted island fraction (thresholds placed from a sample of the muscle's cells)."""
    spec = PhantomSpec(age=60, sex="female", bmi=30)
    ph = make_phantom(spec, 4)
    m, _ = truth_tables(ph.truth, participant_id="X", bmi=30)
    for row in m.itertuples():
        target = 100 * ph.muscle_intermat_target[row.muscle]
        assert row.intermat_pct == pytest.approx(target, abs=0.6), row.muscle
    assert set(ph.muscle_diffuse.values()) == {0.0}


def test_healthy_muscle_fat_is_continuous_and_smooth(phantom):
    """Lean muscle is not one value: it varies smoothly inside each muscle (neighbouring
    sub-voxels differ far less than the muscle's spread), and the voxels the pipeline sees
    take every value between lean muscle and fat (partial volume, small islands)."""
    fine = phantom.fine
    lab = fine.labels
    label = MUSCLE_BY_NAME["quadriceps_femoris_left"].label
    inside = ndimage.binary_erosion(lab == label, iterations=2)
    lean = inside & (fine.ff < 0.5)
    values = fine.ff[lean]
    assert values.std() > 0.006 and np.unique(values).size > 1000
    assert np.percentile(values, 1) > 0.0 and np.percentile(values, 99) < 0.12
    step = np.abs(fine.ff[1:] - fine.ff[:-1])[lean[1:] & lean[:-1]]
    assert np.median(step) < 0.3 * values.std()
    # Voxels: noise-free ff of every labelled voxel.
    ff = phantom.fat_true / np.maximum(phantom.water_true + phantom.fat_true, 1e-6)
    v = ff[phantom.labels > 0]
    between = ((v > 0.12) & (v < 0.5)).mean()
    assert between > 0.05, f"only {between:.1%} of muscle voxels between lean and fat"
    assert np.histogram(v, bins=20, range=(0, 1))[0].min() > 0  # no empty ff band


def test_diffuse_infiltration_shifts_whole_muscles():
    """Diffuse myopathy moves every sub-voxel of a muscle (no lean core left), islands-only
    myopathy leaves lean tissue between fat islands; both replace the same amount of fat."""
    common = dict(**COARSE, age=60, bmi=26, myopathy=True, disease_duration_years=10.0,
                  diagnosis="IMNM")
    diffuse = make_phantom(PhantomSpec(**common, diffuse_share=1.0), 21, keep_fine=True)
    islands = make_phantom(PhantomSpec(**common, diffuse_share=0.0), 21, keep_fine=True)
    checked = 0
    for m in MUSCLES:
        d = diffuse.muscle_diffuse[m.name]
        if not 0.2 <= d <= 0.65:
            continue
        checked += 1
        v = diffuse.truth.ff[m.label].astype(float)
        assert islands.muscle_diffuse[m.name] == 0.0
        w = islands.truth.ff[m.label].astype(float)
        # The whole muscle moved up through the 0.2-0.8 range ...
        lean = np.median(w[w < 0.3])
        expected = lean + (0.93 - lean) * d
        assert np.median(v) == pytest.approx(expected, abs=0.08), m.name
        assert np.mean(v < 0.1) < 0.02, m.name
        assert np.mean((v > 0.1) & (v < 0.9)) > 0.8, m.name
        # ... while islands alone leave tissue lean or fat, at the same mean fat.
        assert np.mean((w > 0.15) & (w < 0.8)) < 0.02, m.name
        assert np.mean(w >= 0.5) == pytest.approx(islands.muscle_intermat_target[m.name],
                                                  abs=0.04), m.name
        # (diffuse tissue tends to ff 0.93, islands sit at 0.90)
        assert v.mean() == pytest.approx(w.mean(), abs=0.08), m.name
    assert checked >= 3


def test_same_seed_at_another_voxel_size_is_the_same_body():
    """Anatomy and fat fields live in world mm: at 12 and 6 mm the true tissue agrees, to the
    fascia planes (one sub-voxel thick: 6 mm at the 12 mm grid, where a muscle with many
    neighbours loses up to ~10 % of its volume to them) and the field of view's edges."""
    kw = dict(age=50, sex="female", bmi=28)
    a = _truth(PhantomSpec(shape=(42, 28, 80), spacing_mm=(12.0, 12.0, 12.0), **kw), 7)
    b = _truth(PhantomSpec(shape=(84, 56, 160), spacing_mm=(6.0, 6.0, 6.0), **kw), 7)
    ma, mb = a[0].set_index("muscle"), b[0].set_index("muscle")
    assert np.allclose(ma.volume_cm3, mb.volume_cm3, rtol=0.12)
    assert ma.volume_cm3.sum() == pytest.approx(mb.volume_cm3.sum(), rel=0.06)
    assert np.allclose(ma.intermat_pct, mb.intermat_pct, atol=1.0)
    assert a[1]["intermat_pct"] == pytest.approx(b[1]["intermat_pct"], abs=0.3)


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
        (dict(supersample=0), "supersample"),
        (dict(supersample=2.0), "supersample"),
        (dict(diffuse_share=1.5), "diffuse_share"),
    ],
)
def test_spec_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhantomSpec(**kwargs)
