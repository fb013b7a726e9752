"""The shipped label-map presets: valid names, unique values, the published label values."""

from __future__ import annotations

import csv

import pytest

from schemas.vocabulary import MUSCLE_NAMES, PRESET_NAMES, PRESETS_DIR, load_preset


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_is_valid(name):
    path = PRESETS_DIR / f"{name}.csv"
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["value", "name"]
        rows = list(reader)
    values = [int(v) for v, _ in rows]
    names = [n for _, n in rows]
    assert len(set(values)) == len(values), "label values must be unique"
    assert len(set(names)) == len(names), "a muscle must come from one label value"
    assert set(names) <= set(MUSCLE_NAMES)
    assert all(v > 0 for v in values)
    lm = load_preset(name)
    assert len(lm.values) == len(rows)


def _pairs(name):
    return dict(load_preset(name).values)


def test_total_mr_published_values():
    """A real TotalSegmentator total_mr output: 46/47 autochthon, 48/49 iliopsoas (L/R)."""
    m = _pairs("total_mr")
    assert m[46] == "autochthon_left" and m[47] == "autochthon_right"
    assert m[48] == "iliopsoas_left" and m[49] == "iliopsoas_right"
    assert m[40] == "gluteus_maximus_left" and m[45] == "gluteus_minimus_right"
    assert len(m) == 10


def test_thigh_shoulder_muscles_mr_values():
    m = _pairs("thigh_shoulder_muscles_mr")
    assert m == {
        1: "quadriceps_femoris_left", 2: "quadriceps_femoris_right",
        3: "thigh_medial_compartment_left", 4: "thigh_medial_compartment_right",
        5: "thigh_posterior_compartment_left", 6: "thigh_posterior_compartment_right",
        7: "sartorius_left", 8: "sartorius_right",
    }


def test_total_mr_and_thigh_model_together_cover_all_18():
    assert set(_pairs("total_mr").values()) | set(_pairs("thigh_shoulder_muscles_mr").values()) \
        == set(MUSCLE_NAMES)


def test_mrsegmentator_and_vibesegmentator_values():
    mr = _pairs("mrsegmentator")
    assert mr[31] == "autochthon_left" and mr[34] == "iliopsoas_right"
    assert mr[35] == "gluteus_maximus_left" and mr[40] == "gluteus_minimus_right"
    vibe = _pairs("vibesegmentator")
    assert vibe[53] == "gluteus_maximus_left" and vibe[59] == "autochthon_left"
    assert vibe[62] == "iliopsoas_right"
    assert len(mr) == len(vibe) == 10


def test_lookup_table_maps_tool_values_to_ours():
    import numpy as np

    from schemas.vocabulary import MUSCLE_BY_NAME

    lut = load_preset("total_mr").lookup_table(50)
    seg = np.array([0, 5, 46, 49, 50])  # background, liver, autochthon L, iliopsoas R, brain
    assert lut[seg].tolist() == [0, 0, MUSCLE_BY_NAME["autochthon_left"].label,
                                 MUSCLE_BY_NAME["iliopsoas_right"].label, 0]
