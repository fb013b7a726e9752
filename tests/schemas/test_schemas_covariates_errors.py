"""schemas.covariates refuses each kind of bad covariates row with a message naming the file,
the row, the column and the value; good files come back typed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.covariates import load_covariates
from schemas.manifest import ManifestError

HEADER = ("participant_id,site,age,sex,height_m,weight_kg,bmi,diabetes,dyslipidemia,"
          "osteoporosis,osteoarthritis,met_min_week,cbp,pain_nrs,diagnosis,"
          "disease_duration_years,scanner")
GOOD = [
    "P0001,siteA,54.2,female,1.64,70.1,26.06,0,1,0,0,1800,1,6,IMNM,4.5,Aera",
    "P0002,siteB,61.0,male,1.80,85.0,26.23,1,0,0,1,900,0,,IBM,10,Skyra",
    "P0003,siteA,47.5,Female,1.70,60.0,20.76,0,0,1,0,2500,0,,,,",
]


def _write(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "covariates.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _replace(index: int, column: str, value: str) -> list[str]:
    cols = HEADER.split(",")
    rows = list(GOOD)
    cells = rows[index].split(",")
    cells[cols.index(column)] = value
    rows[index] = ",".join(cells)
    return rows


def _expect(path: Path, *parts: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_covariates(path)
    msg = str(info.value)
    assert str(path.resolve()) in msg, msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_good_covariates_are_typed(tmp_path):
    cov = load_covariates(_write(tmp_path, GOOD))
    assert list(cov.index) == ["P0001", "P0002", "P0003"]
    assert cov["age"].dtype == np.float64 and cov.loc["P0002", "age"] == 61.0
    assert cov.loc["P0003", "sex"] == "female"  # case-folded
    assert np.isnan(cov.loc["P0002", "pain_nrs"])  # empty = missing
    assert cov["cbp"].tolist() == [1.0, 0.0, 0.0]
    assert pd.isna(cov.loc["P0003", "diagnosis"])
    assert cov["scanner"].tolist()[:2] == ["Aera", "Skyra"]  # unknown columns pass through


@pytest.mark.parametrize(
    "row,column,value,problem",
    [
        (1, "age", "sixty", "is not a number"),
        (0, "age", "140", "outside"),
        (2, "sex", "f", "must be one of"),
        (0, "height_m", "170", "outside"),
        (1, "weight_kg", "-3", "outside"),
        (0, "bmi", "abc", "is not a number"),
        (1, "diabetes", "yes", "is not a number"),
        (1, "cbp", "2", "must be 0 or 1"),
        (0, "osteoporosis", "0.5", "must be 0 or 1"),
        (0, "pain_nrs", "11", "outside"),
        (2, "met_min_week", "-10", "outside"),
        (1, "disease_duration_years", "inf", "is not finite"),
        (0, "participant_id", "P 1", "letters, digits"),
        (2, "participant_id", "", "letters, digits"),
    ],
    ids=["non-numeric-age", "age-range", "bad-sex", "height-in-cm", "negative-weight",
         "non-numeric-bmi", "binary-text", "binary-two", "binary-half", "pain-above-10",
         "negative-met", "infinite-duration", "bad-id", "empty-id"],
)
def test_bad_value_names_row_column_value(tmp_path, row, column, value, problem):
    path = _write(tmp_path, _replace(row, column, value))
    _expect(path, f"row {row + 1} (line {row + 2})", f"column {column!r}", repr(value), problem)


def test_duplicate_participant(tmp_path):
    rows = [*GOOD, GOOD[0]]
    _expect(_write(tmp_path, rows), "row 4 (line 5)", "column 'participant_id'", "'P0001'",
            "duplicate", "first at row 1")


def test_missing_participant_id_column(tmp_path):
    rows = [r.split(",", 1)[1] for r in GOOD]
    _expect(_write(tmp_path, rows, header=HEADER.split(",", 1)[1]),
            "missing column 'participant_id'")


def test_parquet_input(tmp_path):
    df = pd.DataFrame({"participant_id": ["P1", "P2"], "age": [50.0, -4.0], "sex": ["male", "female"]})
    path = tmp_path / "cov.parquet"
    df.to_parquet(path)
    _expect(path, "row 2", "column 'age'", "-4.0", "outside")
