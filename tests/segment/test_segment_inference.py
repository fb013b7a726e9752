"""Inference kernels on random arrays and tiny phantoms (random-weight model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_SHAPE, assert_labels_valid, phantom_group

from pipelines.segment.checkpoint import PreprocessSpec, load_model
from pipelines.segment.inference import normalise, predict, target_shape
from schemas.vocabulary import MUSCLE_NAMES


def test_normalise_is_scale_invariant_and_clipped():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.gamma(2.0, 100.0, size=(2, 20, 20, 20)).astype(np.float32))
    spec = PreprocessSpec(spacing_mm=(6.0, 6.0, 6.0))
    a = normalise(x.clone(), ("water", "fat"), spec)
    b = normalise(x.clone() * 37.0, ("water", "fat"), spec)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert float(a.min()) >= 0.0 and float(a.max()) <= spec.clip
    # the reference percentile of water + fat over the foreground lands near 1
    ref = a.sum(0)
    fg = ref[ref > spec.foreground_fraction * ref.max()]
    assert 0.8 < float(torch.quantile(fg, spec.percentile / 100)) < 1.2


def test_normalise_all_zero_volume_does_not_divide_by_zero():
    x = torch.zeros(2, 8, 8, 8)
    out = normalise(x, ("water", "fat"), PreprocessSpec(spacing_mm=(6.0, 6.0, 6.0)))
    assert torch.all(out == 0)


def test_target_shape_keeps_field_of_view():
    assert target_shape((224, 174, 370), (2.232, 2.232, 3.0), (6.0, 6.0, 6.0)) == (83, 65, 185)


def test_predict_shapes_confidence_and_scale_invariance(tiny_model):
    arrays, attrs, _ = phantom_group("P1", 5)
    model = load_model(tiny_model)
    pred = predict(model, arrays, attrs.spacing_mm, sw_batch_size=3)
    assert_labels_valid(pred.labels, TINY_SHAPE)
    assert not pred.resampled
    assert set(pred.confidence) == set(MUSCLE_NAMES)
    for name, c in pred.confidence.items():
        if pred.voxels[name]:
            assert 0.0 < c <= 1.0
        else:
            assert c is None
    # intensity normalisation is part of the model: arbitrary scanner units do not matter
    scaled = {k: v * 123.0 for k, v in arrays.items()}
    again = predict(model, scaled, attrs.spacing_mm, sw_batch_size=1)
    assert np.mean(again.labels == pred.labels) > 0.999


def test_predict_resamples_other_spacing_back_to_the_stored_grid(tiny_model):
    # 8 mm data for a 12 mm model: resampled to the model grid and the labels back
    shape = (63, 42, 60)
    arrays, attrs, _ = phantom_group("P1", 6, shape=shape, spacing=(8.0, 8.0, 8.0))
    pred = predict(load_model(tiny_model), arrays, attrs.spacing_mm)
    assert pred.resampled
    assert_labels_valid(pred.labels, shape)


def test_predict_refuses_channels_of_different_shapes(tiny_model):
    model = load_model(tiny_model)
    arrays = {"water": np.zeros((10, 10, 10), np.float32),
              "fat": np.zeros((10, 10, 11), np.float32)}
    with pytest.raises(ValueError, match="'fat' has shape"):
        predict(model, arrays, (12.0, 12.0, 12.0))


def test_predict_tolerates_nan(tiny_model):
    arrays, attrs, _ = phantom_group("P1", 7)
    arrays["water"][0, 0, :5] = np.nan
    pred = predict(load_model(tiny_model), arrays, attrs.spacing_mm)
    assert_labels_valid(pred.labels, TINY_SHAPE)


@pytest.mark.gpu
def test_predict_on_cuda_matches_cpu(tiny_model):
    if not torch.cuda.is_available():
        pytest.skip("no usable CUDA device")
    arrays, attrs, _ = phantom_group("P1", 8)
    cpu = predict(load_model(tiny_model, device="cpu"), arrays, attrs.spacing_mm)
    gpu = predict(load_model(tiny_model, device="cuda"), arrays, attrs.spacing_mm, amp=True)
    assert np.mean(cpu.labels == gpu.labels) > 0.99


def test_mirror_permutation_swaps_sides_and_refuses_orphans():
    from pipelines.segment.checkpoint import VOCABULARY, mirror_permutation

    perm = mirror_permutation(VOCABULARY)
    assert perm[0] == 0
    for i, name in enumerate(VOCABULARY[1:], start=1):
        other = VOCABULARY[perm[i]]
        assert other != name and other.rsplit("_", 1)[0] == name.rsplit("_", 1)[0]
        assert perm[perm[i]] == i
    assert mirror_permutation(("background", "liver")) == [0, 1]
    with pytest.raises(ValueError, match="sartorius_left.*no mirror partner"):
        mirror_permutation(("background", "sartorius_left"))


def test_mirrored_prediction_is_exactly_left_right_equivariant(tiny_model):
    # test-time mirroring averages the input's softmax with its mirror's (sides swapped
    # back): segmenting the mirrored scan must give the mirrored labels, sides swapped
    from pipelines.segment.checkpoint import mirror_permutation

    arrays, attrs, _ = phantom_group("P1", 7)
    model = load_model(tiny_model)
    assert model.meta.inference.mirror is False  # older checkpoints: no field, no mirroring
    perm = np.asarray(mirror_permutation(model.meta.vocabulary), np.uint8)
    plain = predict(model, arrays, attrs.spacing_mm, sw_batch_size=2)
    pred = predict(model, arrays, attrs.spacing_mm, sw_batch_size=2, mirror=True)
    flipped = {k: np.ascontiguousarray(v[::-1]) for k, v in arrays.items()}
    back = predict(model, flipped, attrs.spacing_mm, sw_batch_size=2, mirror=True)
    np.testing.assert_array_equal(perm[back.labels[::-1]], pred.labels)
    # ... which plain inference of a random-weight model is not
    plain_back = predict(model, flipped, attrs.spacing_mm, sw_batch_size=2)
    assert np.mean(perm[plain_back.labels[::-1]] != plain.labels) > 0.01
    for name in MUSCLE_NAMES:
        partner = model.meta.vocabulary[perm[model.meta.vocabulary.index(name)]]
        assert back.voxels[partner] == pred.voxels[name]
