"""Every participant group is a valid OME-Zarr 0.5 image with its labels as an image-label,
by the registry's validator (ome-zarr-models) on a fresh store and on a migrated one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel

from pipelines import store as S
from schemas.layout import LABEL_RGBA
from schemas.vocabulary import MUSCLE_NAMES, MUSCLES
from tests.store.makers import write_participant


def _validate(store, pid) -> Image:
    """ome-zarr-models' own check of the group, its labels group and its image-label."""
    image = Image.from_zarr(zarr.open_group(store / pid, mode="r"))
    labels = zarr.open_group(store / pid / "labels" / "muscles", mode="r")
    ImageLabel.from_zarr(labels)
    return image


def test_fresh_group_is_a_valid_image_with_an_image_label(tmp_path):
    store = tmp_path / "s.zarr"
    arrays = write_participant(store, "P1")
    image = _validate(store, "P1")
    ms = image.ome_attributes.multiscales
    assert [m.name for m in ms] == ["water", "fat", "in_phase", "opposed_phase", "ff"]
    assert image.labels.label_paths == ["muscles"]
    label = image.labels.get_image_labels_group("muscles").ome_attributes
    assert label.multiscales[0].datasets[0].path == "0"
    # names and colours of every value, background transparent
    props = {p.label_value: p.model_dump() for p in label.image_label.properties}
    assert [props[m.label]["name"] for m in MUSCLES] == list(MUSCLE_NAMES)
    assert props[0]["name"] == "background"
    colours = {c.label_value: tuple(c.rgba) for c in label.image_label.colors}
    assert colours == dict(LABEL_RGBA) and colours[0][3] == 0
    assert len({c[:3] for v, c in colours.items() if v}) == 18  # 18 distinct colours
    # the label image is on the images' grid, and the values are the stored ones
    tr = [t.model_dump() for t in label.multiscales[0].datasets[0].coordinateTransformations]
    assert tr == [t.model_dump() for t in ms[0].datasets[0].coordinateTransformations]
    np.testing.assert_array_equal(zarr.open_array(store / "P1" / "labels" / "muscles" / "0",
                                                  mode="r")[...], arrays["labels"])
    np.testing.assert_array_equal(S.read_array(store, "P1", "labels"), arrays["labels"])


def test_group_without_labels_and_labels_added_later_stay_valid(tmp_path):
    store = tmp_path / "s.zarr"
    arrays = write_participant(store, "P1", labels=False)
    assert _validate_no_labels(store, "P1")
    S.write_array(store, "P1", "labels", (arrays["water"] > 100).astype(np.uint8) * 5)
    _validate(store, "P1")
    # replaced again (as segment --force does): still one labels group, no debris
    S.write_array(store, "P1", "labels", np.zeros(arrays["water"].shape, np.uint8))
    _validate(store, "P1")
    assert not [p for p in (store / "P1").iterdir() if p.name.startswith(".")]
    assert S.array_names(store, "P1") == ["fat", "ff", "in_phase", "labels",
                                          "opposed_phase", "water"]


def _validate_no_labels(store, pid) -> bool:
    image = Image.from_zarr(zarr.open_group(store / pid, mode="r"))
    return image.labels is None


def test_migrated_layout1_store_is_valid(layout1):
    # before: the validator refuses it, as the issue reports
    with pytest.raises(Exception, match="group at labels, but an array"):
        Image.from_zarr(zarr.open_group(layout1 / "P1", mode="r"))
    S.migrate_store(layout1)
    _validate(layout1, "P1")
    assert _validate_no_labels(layout1, "P2")


def test_oblique_affine_keeps_the_exact_affine_beside_the_ome_grid(tmp_path):
    c, s = np.cos(0.2), np.sin(0.2)
    aff = np.array([[2 * c, -2.5 * s, 0, 5.0], [2 * s, 2.5 * c, 0, -7.0], [0, 0, 3, 100.0],
                    [0, 0, 0, 1]])
    store = tmp_path / "s.zarr"
    write_participant(store, "P1", affine=aff)
    image = _validate(store, "P1")
    scale, translation = image.ome_attributes.multiscales[0].datasets[0].coordinateTransformations
    assert scale.scale == pytest.approx([2.0, 2.5, 3.0])
    assert translation.translation == pytest.approx([5.0, -7.0, 100.0])
    doc = json.loads((store / "P1" / "zarr.json").read_text())
    np.testing.assert_array_equal(np.asarray(doc["attributes"]["myocohort"]["affine"]), aff)


def test_the_ome_zarr_reader_finds_the_image_and_its_labels(tmp_path):
    """ome-zarr-py, napari-ome-zarr's reader (not installable with our pins: its fsspec[s3]
    extra needs python-dateutil<3; skipped where it is absent)."""
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    store = tmp_path / "s.zarr"
    write_participant(store, "P1")
    nodes = list(reader.Reader(parse_url(str(store / "P1")))())
    kinds = [{type(s).__name__ for s in n.specs} for n in nodes]
    assert {"Multiscales"} in kinds and any("Label" in k for k in kinds)
    label = next(n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs))
    assert {v["name"] for v in label.metadata["properties"].values()} >= set(MUSCLE_NAMES)
