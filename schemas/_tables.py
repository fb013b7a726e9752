"""Reading CSV/Parquet tables for the contracts, with errors that name the file."""

from __future__ import annotations

from pathlib import Path


def read_table(path: str | Path, what: str):
    """Read a CSV or Parquet file into a DataFrame of strings (CSV) or native types (Parquet).

    CSV cells are kept as strings (no type guessing) so validation can report the raw value.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path}: file not found")
    suffix = "".join(path.suffixes[-1:]).lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except Exception as e:  # pandas/pyarrow raise many types for a corrupt file
        raise ValueError(f"{what} {path}: cannot be read as a table: {e}") from e
    if suffix in (".csv", ".txt", ".tsv"):
        if len(df.columns) == 1:
            _check_delimiter(path, what, str(df.columns[0]), sep)
        return df
    raise ValueError(f"{what} {path}: unsupported file type {suffix!r} (use .csv or .parquet)")


def _check_delimiter(path: Path, what: str, header: str, sep: str) -> None:
    """A table that parses into one column whose header holds another delimiter was written
    with that delimiter: say so instead of reporting every column as missing."""
    names = {";": "semicolons", "\t": "tabs", "|": "vertical bars", ",": "commas"}
    for other in (";", "\t", "|", ","):
        if other != sep and other in header:
            raise ValueError(
                f"{what} {path}: the header {header!r} reads as one column: the file seems to "
                f"separate its columns with {names[other]}, but {names[sep]} are expected "
                f"(save it as comma-separated CSV{', or use .tsv' if other == chr(9) else ''})")


def row_label(path: Path, index: int) -> str:
    """How an error names a data row: 1-based row, plus the line number for CSV files."""
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return f"row {index + 1} (line {index + 2})"
    return f"row {index + 1}"


def is_missing(value) -> bool:
    if value is None:
        return True
    try:
        import math

        if isinstance(value, float) and math.isnan(value):
            return True
    except TypeError:
        pass
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(value, str) and value.strip() == ""
