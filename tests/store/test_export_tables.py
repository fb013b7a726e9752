"""`myocohort export` of labels writes ITK-SNAP and 3D Slicer lookup tables beside the NIfTI;
both parse (as the viewers read them) and name all 18 muscles; `--channel bogus` lists the
arrays there are."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.ingest.export import (
    itksnap_label_descriptions,
    label_table_paths,
    slicer_color_table,
)
from schemas.layout import LABEL_RGBA
from schemas.vocabulary import MUSCLES
from tests.store.makers import write_participant

#: ITK-SNAP's reader: '#' lines are comments; then IDX R G B A VIS MSH "LABEL".
_ITKSNAP_ROW = re.compile(
    r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+"([^"]*)"\s*$')


def parse_itksnap(text: str) -> dict[int, tuple]:
    rows = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _ITKSNAP_ROW.match(line)
        assert m, f"not an ITK-SNAP label line: {line!r}"
        idx, r, g, b = (int(v) for v in m.groups()[:4])
        alpha = float(m.group(5))
        assert 0 <= alpha <= 1 and all(0 <= c <= 255 for c in (r, g, b))
        rows[idx] = ((r, g, b), alpha, int(m.group(6)), int(m.group(7)), m.group(8))
    return rows


def parse_slicer(text: str) -> dict[int, tuple]:
    """Slicer's discrete colour table: '# Color table file' header, then
    ``index name R G B A`` (0-255; names without spaces)."""
    lines = text.splitlines()
    assert lines[0].startswith("# Color table file")
    rows = {}
    for line in lines[1:]:
        if line.startswith("#"):
            continue
        idx, name, *rgba = line.split()
        assert len(rgba) == 4, line
        rows[int(idx)] = (name, tuple(int(v) for v in rgba))
    n = int(re.search(r"# (\d+) values", text).group(1))
    assert n == len(rows)
    return rows


def test_tables_name_all_18_muscles_with_the_store_colours():
    itk = parse_itksnap(itksnap_label_descriptions())
    slicer = parse_slicer(slicer_color_table())
    assert sorted(itk) == sorted(slicer) == list(range(19))
    for m in MUSCLES:
        assert itk[m.label][4] == m.name and slicer[m.label][0] == m.name
        assert itk[m.label][0] == LABEL_RGBA[m.label][:3] == slicer[m.label][1][:3]
        assert itk[m.label][1:4] == (1.0, 1, 1) and slicer[m.label][1][3] == 255
    assert itk[0] == ((0, 0, 0), 0.0, 0, 0, "Clear Label")
    assert slicer[0] == ("background", (0, 0, 0, 0))


def test_export_of_labels_writes_both_tables_beside_the_nifti(tmp_path):
    store = tmp_path / "s.zarr"
    arrays = write_participant(store, "P1", shape=(8, 8, 8))
    out = tmp_path / "out" / "P1_labels.nii.gz"
    out.parent.mkdir()
    r = CliRunner().invoke(app, ["export", str(store), "P1", "--channel", "labels",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    itksnap, slicer = label_table_paths(out)
    assert itksnap == tmp_path / "out" / "P1_labels_itksnap.txt"
    assert slicer == tmp_path / "out" / "P1_labels_ColorTable.ctbl"
    assert str(itksnap) in r.output and str(slicer) in r.output
    names = {m.name for m in MUSCLES}
    assert {row[4] for row in parse_itksnap(itksnap.read_text()).values()} >= names
    assert {row[0] for row in parse_slicer(slicer.read_text()).values()} >= names
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), arrays["labels"])
    # an image gets no lookup table
    r = CliRunner().invoke(app, ["export", str(store), "P1", "--channel", "water",
                                 "--out", str(tmp_path / "out" / "w.nii")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "P1_labels.nii.gz", "P1_labels_ColorTable.ctbl", "P1_labels_itksnap.txt", "w.nii"]


def test_export_of_a_missing_array_lists_those_there_are(tmp_path):
    store = tmp_path / "s.zarr"
    write_participant(store, "P1", shape=(8, 8, 8), labels=False)
    r = CliRunner().invoke(app, ["export", str(store), "P1", "--channel", "bogus",
                                 "--out", str(tmp_path / "x.nii.gz")])
    assert r.exit_code == 2
    assert ("participant P1: no array 'bogus' in store" in r.output
            and "arrays there: fat, ff, in_phase, opposed_phase, water" in r.output)
    assert not (tmp_path / "x.nii.gz").exists()
