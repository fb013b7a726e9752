"""Readable names and units of the cohort table's columns and of model terms.

``InterMAT, per 2 SD`` instead of ``intermat_pct``, ``Female (ref. male)`` instead of
``sex[female]``, ``Activity: low (ref. moderate)`` instead of ``activity[low]``.  A column we
do not know keeps its name, with underscores as spaces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: unit of ``lmm_index`` per ``quantify.normalisation`` (the index is lmm_cm3 / normaliser)
LMM_INDEX_UNITS = MappingProxyType({"bmi": "cm³/(kg/m²)", "height2": "cm³/m²", "none": "cm³"})


@dataclass(frozen=True)
class Variable:
    """How a column is named in tables and figures.

    Attributes
    ----------
    label : str
        Name in a sentence-initial position (``InterMAT``, ``Age``).
    unit : str
        Unit of its values (``%``, ``years``); empty for counts and categories.
    per : str
        The unit one odds ratio refers to when entered as it is (``year`` for age).
    short : str
        Abbreviation for column headers (``CBP``); the label when empty.
    level_alone : bool
        A level of this categorical column reads on its own (``Female``), not as
        ``Sex: female``.
    order : tuple of str
        Order of its levels in tables (others follow, sorted).
    """

    label: str
    unit: str = ""
    per: str = ""
    short: str = ""
    level_alone: bool = False
    order: tuple[str, ...] = ()

    def with_unit(self) -> str:
        """``InterMAT, %``; the label alone without a unit."""
        return f"{self.label}, {self.unit}" if self.unit else self.label

    @property
    def abbrev(self) -> str:
        return self.short or self.label


_DEFAULTS: dict[str, Variable] = {
    "intermat_pct": Variable("InterMAT", "%", "percentage point"),
    "lmm_cm3": Variable("LMM volume", "cm³", "cm³"),
    "lmm_index": Variable("LMM index", LMM_INDEX_UNITS["bmi"], "unit"),
    "lesion_load_pct": Variable("Lesion load", "%", "percentage point"),
    "lesion_load_quotient": Variable("Lesion load quotient", "%/year", "%/year"),
    "disease_duration_years": Variable("Disease duration", "years", "year"),
    "age": Variable("Age", "years", "year"),
    "sex": Variable("Sex", level_alone=True, order=("male", "female")),
    "bmi": Variable("BMI", "kg/m²", "kg/m²"),
    "height_m": Variable("Height", "m", "m"),
    "weight_kg": Variable("Weight", "kg", "kg"),
    "diabetes": Variable("Diabetes"),
    "dyslipidemia": Variable("Dyslipidaemia"),
    "osteoporosis": Variable("Osteoporosis"),
    "osteoarthritis": Variable("Osteoarthritis"),
    "activity": Variable("Activity", order=("low", "moderate", "high")),
    "met_min_week": Variable("Physical activity", "MET-min/week", "MET-min/week"),
    "site": Variable("Site"),
    "diagnosis": Variable("Diagnosis"),
    "cbp": Variable("Chronic back pain", short="CBP"),
    "pain_nrs": Variable("Pain intensity", "NRS 0-10", "NRS point"),
    "pain_high": Variable("High pain intensity"),
    "signal_floor": Variable("Signal floor", "a.u."),
    "n_muscles": Variable("Muscles segmented", "n"),
    # per-muscle metrics (muscle_metrics table)
    "volume_cm3": Variable("Muscle volume", "cm³", "cm³"),
    "lean_cm3": Variable("Lean volume", "cm³", "cm³"),
    "intermat_cm3": Variable("InterMAT volume", "cm³", "cm³"),
    "ff_mean_pct": Variable("Mean fat fraction", "%", "percentage point"),
    "ff_median_pct": Variable("Median fat fraction", "%", "percentage point"),
    "ff_lean_mean_pct": Variable("Lean-tissue fat fraction", "%", "percentage point"),
    "mercuri_grade": Variable("Mercuri grade", "0-4", "grade"),
}


@dataclass(frozen=True)
class Labels:
    """The report's vocabulary: column -> :class:`Variable` (defaults for the study's
    columns; :func:`labels_for` sets what depends on the run, e.g. the LMM index's unit)."""

    variables: Mapping[str, Variable] = field(default_factory=lambda: MappingProxyType(_DEFAULTS))

    def __getitem__(self, column: str) -> Variable:
        v = self.variables.get(column)
        if v is not None:
            return v
        text = column.replace("_", " ").strip()
        return Variable(text[:1].upper() + text[1:] if text else column)

    def name(self, column: str) -> str:
        """``InterMAT, %``."""
        return self[column].with_unit()

    def level(self, column: str, level: str) -> str:
        """``Female`` (``sex``) or ``Activity: low``."""
        v = self[column]
        lev = str(level)
        return lev[:1].upper() + lev[1:] if v.level_alone else f"{v.label}: {lev}"

    def term(self, term: str, references: Mapping[str, str] | None = None,
             exposures: tuple[str, ...] = (), binary: tuple[str, ...] = ()) -> str:
        """The readable name of a model term, with its scale or reference.

        ``intermat_pct`` (an exposure) -> ``InterMAT, per 2 SD``; ``age`` -> ``Age, per
        year``; ``diabetes`` (0/1) -> ``Diabetes (yes vs. no)``; ``sex[female]`` ->
        ``Female (ref. male)``; ``activity[low]`` -> ``Activity: low (ref. moderate)``;
        ``intermat_pct:lmm_index`` -> ``InterMAT × LMM index (per 2 SD each)``.
        """
        references = references or {}
        if term == "(Intercept)":
            return "Intercept"
        if ":" in term:
            a, b = term.split(":", 1)
            return f"{self[a].label} × {self[b].label} (per 2 SD each)"
        m = re.fullmatch(r"(.+)\[(.+)\]", term)
        if m:
            col, lev = m.groups()
            ref = references.get(col)
            return self.level(col, lev) + (f" (ref. {ref})" if ref is not None else "")
        v = self[term]
        if term in exposures:
            return f"{v.label}, per 2 SD"
        if term in binary:
            return f"{v.label} (yes vs. no)"
        return f"{v.label}, per {v.per}" if v.per else v.label

    def short_term(self, term: str) -> str:
        """A model term's name without its scale: ``Diabetes``, ``Activity: low``,
        ``Female``, ``InterMAT × LMM index``."""
        if ":" in term:
            a, b = term.split(":", 1)
            return f"{self[a].label} × {self[b].label}"
        m = re.fullmatch(r"(.+)\[(.+)\]", term)
        if m:
            return self.level(*m.groups())
        return "Intercept" if term == "(Intercept)" else self[term].label

    def outcome_groups(self, outcome: str) -> tuple[str, str]:
        """Column headers of the two outcome groups: ``No CBP``, ``CBP``."""
        a = self[outcome].abbrev
        return f"No {a}", a


def labels_for(normalisation: str | None = None) -> Labels:
    """The vocabulary of a run: the LMM index's unit follows ``quantify.normalisation``
    (``bmi``: cm³/(kg/m²), ``height2``: cm³/m², ``none``: cm³); unknown: the default's."""
    if normalisation is None or normalisation not in LMM_INDEX_UNITS:
        return Labels()
    variables = dict(_DEFAULTS)
    variables["lmm_index"] = Variable("LMM index", LMM_INDEX_UNITS[normalisation], "unit")
    return Labels(MappingProxyType(variables))


_LIST = re.compile(r"\[((?:'[^']*'|\"[^\"]*\")(?:, (?:'[^']*'|\"[^\"]*\"))*)?\]")


def plain_text(text: str) -> str:
    """``['osteoporosis', 'diabetes']`` -> ``osteoporosis, diabetes`` (Python list syntax
    out of messages written for logs); ``[]`` -> ``none``."""

    def repl(m: re.Match) -> str:
        inner = m.group(1)
        if not inner:
            return "none"
        return ", ".join(s[1:-1] for s in re.findall(r"'[^']*'|\"[^\"]*\"", inner))

    return _LIST.sub(repl, text)
