"""schemas.manifest refuses each kind of bad manifest with a message naming the file, the row,
the column and the value."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from schemas.manifest import ManifestError, load_manifest

HEADER = "participant_id,site,station,channel,path,label_map"


def _good_rows() -> list[str]:
    rows = []
    for pid in ("P0001", "P0002"):
        for station in (0, 1):
            for channel in ("water", "fat"):
                rows.append(f"{pid},siteA,{station},{channel},img/{pid}_{station}_{channel}.nii.gz,")
    return rows


def _write(tmp_path: Path, rows: list[str], header: str = HEADER, name="manifest.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _expect(path: Path, *parts: str) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert str(path.resolve()) in msg, msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


def test_good_manifest_loads(tmp_path):
    m = load_manifest(_write(tmp_path, _good_rows()))
    assert m.participant_ids == ("P0001", "P0002")
    assert m.participants[0].stations == (0, 1)
    assert m.participants[0].get(1, "fat").path == tmp_path.resolve() / "img/P0001_1_fat.nii.gz"


def _replace(rows, index, column, value):
    cols = HEADER.split(",")
    cells = rows[index].split(",")
    cells[cols.index(column)] = value
    rows = list(rows)
    rows[index] = ",".join(cells)
    return rows


@pytest.mark.parametrize(
    "column,value,problem",
    [
        ("channel", "t1", "must be one of"),
        ("participant_id", "P 0001", "letters, digits"),
        ("participant_id", "P/0001", "letters, digits"),
        ("station", "-1", "must be >= 0"),
        ("station", "first", "is not an integer"),
        ("station", "1.5", "is not an integer"),
        ("path", "", "is empty"),
        ("site", "", "is empty"),
    ],
    ids=["bad-channel", "id-space", "id-slash", "negative-station", "text-station",
         "fractional-station", "empty-path", "empty-site"],
)
def test_bad_cell_names_row_column_value(tmp_path, column, value, problem):
    rows = _replace(_good_rows(), 2, column, value)
    _expect(_write(tmp_path, rows), "row 3 (line 4)", f"column {column!r}", repr(value), problem)


def test_missing_fat_names_participant_and_station(tmp_path):
    rows = [r for r in _good_rows() if not r.startswith("P0002,siteA,1,fat")]
    _expect(_write(tmp_path, rows), "participant P0002", "station 1", "'fat'")


def test_missing_water_names_participant_and_station(tmp_path):
    rows = [r for r in _good_rows() if not r.startswith("P0001,siteA,0,water")]
    _expect(_write(tmp_path, rows), "participant P0001", "station 0", "'water'")


def test_duplicate_row(tmp_path):
    rows = _good_rows()
    rows.append(rows[1])
    _expect(_write(tmp_path, rows), f"row {len(rows)} (line {len(rows) + 1})",
            "column 'channel'", "'fat'", "duplicate", "first given at row 2")


def test_conflicting_site(tmp_path):
    rows = _replace(_good_rows(), 3, "site", "siteB")
    _expect(_write(tmp_path, rows), "row 4 (line 5)", "column 'site'", "'siteB'", "'siteA'")


def test_unknown_label_name_in_label_map(tmp_path):
    (tmp_path / "map.csv").write_text("value,name\n1,autochthon_left\n2,biceps_left\n")
    rows = _good_rows() + ["P0001,siteA,0,labels,seg/P0001_0.nii.gz,map.csv"]
    msg = _expect(_write(tmp_path, rows), f"row {len(rows)}", "column 'label_map'",
                  "'map.csv'", "biceps_left")
    assert "row 3" in msg  # the row of the label-map file as well


def test_unknown_preset_or_missing_label_map_file(tmp_path):
    rows = _good_rows() + ["P0001,siteA,0,labels,seg/P0001_0.nii.gz,totalseg_v9"]
    _expect(_write(tmp_path, rows), f"row {len(rows)}", "column 'label_map'", "'totalseg_v9'",
            "not found")


def test_label_map_on_an_image_row(tmp_path):
    rows = _replace(_good_rows(), 0, "label_map", "total_mr")
    _expect(_write(tmp_path, rows), "row 1 (line 2)", "column 'label_map'", "'total_mr'",
            "only 'labels' rows")


def test_preset_label_map_resolves(tmp_path):
    rows = _good_rows() + ["P0001,siteA,0,labels,seg/P0001_0.nii.gz,total_mr"]
    m = load_manifest(_write(tmp_path, rows))
    ref = m.participants[0].get(0, "labels")
    assert ref.label_map.lookup_table(60)[46] != 0


def test_missing_column(tmp_path):
    rows = [",".join(r.split(",")[:4]) for r in _good_rows()]
    _expect(_write(tmp_path, rows, header="participant_id,site,station,channel"),
            "missing column", "'path'")


def test_no_rows(tmp_path):
    _expect(_write(tmp_path, []), "no rows")


def test_file_not_found(tmp_path):
    _expect(tmp_path / "absent.csv", "file not found")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "manifest.xlsx"
    path.write_text("x")
    _expect(path, "unsupported file type")


def test_parquet_rows_are_named_without_line_numbers(tmp_path):
    rows = _replace(_good_rows(), 1, "channel", "T2")
    csv = _write(tmp_path, rows)
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    path = tmp_path / "manifest.parquet"
    df.to_parquet(path)
    msg = _expect(path, "row 2", "column 'channel'", "'T2'")
    assert "line" not in msg


@pytest.mark.parametrize("sep,word", [(";", "semicolons"), ("\t", "tabs")])
def test_a_table_with_another_delimiter_gets_a_hint(tmp_path, sep, word):
    from schemas.covariates import load_covariates

    m = tmp_path / "manifest.csv"
    m.write_text(sep.join(["participant_id", "site", "station", "channel", "path"]) + "\n"
                 + sep.join(["P1", "A", "0", "water", "w.nii"]) + "\n")
    with pytest.raises(ManifestError, match=f"one column: the file seems to separate its "
                                            f"columns with {word}"):
        load_manifest(m)
    c = tmp_path / "cov.csv"
    c.write_text(f"participant_id{sep}age\nP1{sep}50\n")
    with pytest.raises(ManifestError, match=word):
        load_covariates(c)


def test_validate_reports_covariates_rows_without_participant(tmp_path):
    from typer.testing import CliRunner

    from jobs.cli import app

    (tmp_path / "w.nii").write_bytes(b"x")
    m = tmp_path / "manifest.csv"
    m.write_text("participant_id,site,station,channel,path\nP1,A,0,water,w.nii\n"
                 "P1,A,0,fat,w.nii\n")
    c = tmp_path / "cov.csv"
    c.write_text("participant_id,age\nP1,50\nP9,60\n")
    res = CliRunner().invoke(app, ["validate", str(m), "--covariates", str(c)])
    assert res.exit_code == 0, res.output
    assert "1 covariates row(s) name no manifest participant (a run leaves them out): P9" \
        in res.output
