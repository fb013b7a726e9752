"""The validation of one or more runs against a synthetic cohort's truth, and its files.

:func:`validate_run` computes every number of one run (pure: tables in, values out);
:func:`validate_runs` reads the cohort and the runs and validates each;
:func:`write_validation` writes the CSV/JSON tables, the Bland-Altman figures and a short
Markdown summary.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.validation.agreement import agreement, grade_agreement
from pipelines.validation.compare import (
    ALL_MUSCLES,
    muscle_rows,
    pair_muscles,
    pair_participants,
    participant_rows,
    regraded,
)
from pipelines.validation.config import ValidationConfig
from pipelines.validation.inputs import RunTables, SynthTruth, read_run, read_truth
from pipelines.validation.odds import odds_ratio_rows, refit_on_truth

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: Columns of ``agreement.csv`` (after ``run``).
AGREEMENT_COLUMNS = ("level", "metric", "muscle", "n", "mean_truth", "mean_measured", "bias",
                     "bias_pct", "sd_diff", "loa_low", "loa_high", "pearson_r", "slope",
                     "intercept", "exact_pct", "within_one_pct", "kappa_quadratic")
ODDS_COLUMNS = ("model", "outcome", "term", "exposure", "planted_or", "fitted_or", "ci_low", "ci_high", "p",
                "attenuation", "truth_fit_or", "attenuation_vs_truth_fit",
                "expected_attenuation")
#: Exposures of the planted model and the participant metric that measures each.
EXPOSURE_METRICS = ("intermat_pct", "lmm_index")


@dataclass(frozen=True)
class RunValidation:
    """Every number of one run against truth.

    ``agreement``: rows of :data:`AGREEMENT_COLUMNS` (participant metrics, then muscle
    metrics pooled over muscles and per muscle); ``grades``: pooled grade agreement with its
    confusion matrix; ``odds_ratios``: rows of :data:`ODDS_COLUMNS`, one block per fitted
    model (``main``; ``pain`` when the report fitted it; empty without a fit); ``fits``: per
    model, the fit's outcome, n, status and site SD against the planted one.  The paired
    frames are kept for the figures and not written.
    """

    name: str
    source: str
    participants: int
    participants_missing: int
    muscles_paired: int
    muscles_missing: int
    muscles_extra: int
    grades_regraded: int
    agreement: tuple[dict[str, Any], ...]
    grades: dict[str, Any]
    odds_ratios: tuple[dict[str, Any], ...]
    fits: dict[str, dict[str, Any]]
    muscles_paired_frame: Any = field(default=None, repr=False, compare=False)
    participants_paired_frame: Any = field(default=None, repr=False, compare=False)

    def row(self, level: str, metric: str, muscle: str = "") -> dict[str, Any]:
        """The agreement row of ``metric`` at ``level`` (``muscle``: a muscle name or
        ``"all"`` at muscle level)."""
        muscle = muscle or (ALL_MUSCLES if level == "muscle" else "")
        for r in self.agreement:
            if (r["level"], r["metric"], r["muscle"]) == (level, metric, muscle):
                return r
        raise KeyError(f"run {self.name}: no {level} row for {metric} {muscle}".rstrip())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "participants": self.participants,
            "participants_missing": self.participants_missing,
            "muscles_paired": self.muscles_paired, "muscles_missing": self.muscles_missing,
            "muscles_extra": self.muscles_extra, "grades_regraded": self.grades_regraded,
            "agreement": list(self.agreement), "grades": self.grades,
            "odds_ratios": list(self.odds_ratios), "fits": self.fits,
        }


@dataclass(frozen=True)
class ValidationResult:
    """The validation of every run given, with what it was made from."""

    cohort: str
    synth: dict[str, Any]
    config: dict[str, Any]
    runs: tuple[RunValidation, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def run(self, name: str) -> RunValidation:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(f"no run {name!r}; runs are {[r.name for r in self.runs]}")

    def to_dict(self) -> dict[str, Any]:
        return {"cohort": self.cohort, "synth": self.synth, "config": self.config,
                "provenance": self.provenance, "runs": [r.to_dict() for r in self.runs]}


def _fit_summary(fit: dict[str, Any], planted: dict[str, Any],
                 truth_fit: dict[str, Any] | None, fit_path: Path) -> dict[str, Any]:
    from pipelines.validation.odds import PLANTED_MODELS

    model = PLANTED_MODELS.get(str(fit.get("outcome", "")))
    record = planted.get(model.record, {}) if model else {}
    return {
        "path": str(fit_path), "outcome": fit.get("outcome"),
        "n": fit.get("n"), "events": fit.get("events"), "status": fit.get("status", "ok"),
        "converged": fit.get("converged"), "group_sd": fit.get("group_sd"),
        "planted_site_sd": record.get("site_sd") if isinstance(record, dict) else None,
        "planted": model is not None,
        "truth_fit": None if truth_fit is None else {
            "n": truth_fit.get("n"), "status": truth_fit.get("status", "ok"),
            "group_sd": truth_fit.get("group_sd")},
    }


def validate_run(run: RunTables, truth: SynthTruth, config: ValidationConfig) -> RunValidation:
    """Every number of ``run`` against ``truth``: agreement per metric and muscle, grade
    agreement, and the odds ratios against the planted ones (with a refit on the true
    exposures when ``config.refit_on_truth``)."""
    t_muscles, t_parts, _ = regraded(truth.muscles, truth.participants, config,
                                     what="truth (recomputed with the run's mapping)")
    m_muscles, m_parts, changed = regraded(run.muscles, run.participants, config,
                                           what=f"run {run.name}")
    pm, missing, extra = pair_muscles(m_muscles, t_muscles)
    pp, missing_parts = pair_participants(m_parts, t_parts)
    rows = [*participant_rows(pp, config), *muscle_rows(pm, config)]
    g = grade_agreement(pm["mercuri_grade_measured"], pm["mercuri_grade_truth"])

    reliability = {m: agreement(pp[f"{m}_measured"], pp[f"{m}_truth"]).pearson_r
                   for m in EXPOSURE_METRICS if f"{m}_measured" in pp.columns}
    odds: list[dict[str, Any]] = []
    fits: dict[str, dict[str, Any]] = {}
    for rf in run.fits:
        truth_fit = None
        if config.refit_on_truth:
            truth_fit = refit_on_truth(rf.fit, truth.participants, truth.covariates,
                                       run.participants["participant_id"], truth.planted)
        odds += [{"model": rf.model, "outcome": rf.fit.get("outcome"), **r}
                 for r in odds_ratio_rows(rf.fit, truth.planted, truth_fit=truth_fit,
                                          reliability=reliability)]
        fits[rf.model] = _fit_summary(rf.fit, truth.planted, truth_fit, rf.path)
    return RunValidation(
        name=run.name, source=str(run.source), participants=len(m_parts),
        participants_missing=missing_parts, muscles_paired=len(pm), muscles_missing=missing,
        muscles_extra=extra, grades_regraded=changed,
        agreement=tuple({"run": run.name, **r} for r in rows), grades=g.to_dict(),
        odds_ratios=tuple({"run": run.name, **r} for r in odds),
        fits=fits,
        muscles_paired_frame=pm, participants_paired_frame=pp,
    )


def validate_runs(cohort: str | Path, runs: dict[str, str | Path], config: ValidationConfig,
                  *, provenance: dict[str, Any] | None = None) -> ValidationResult:
    """Read the synthetic cohort ``cohort`` and each run (name -> workdir or table folder)
    and validate every run (see :func:`validate_run`).

    Raises
    ------
    pipelines.validation.ValidationInputError
        a missing or unreadable input, named.
    ValueError
        no run given.
    """
    if not runs:
        raise ValueError("no run to validate: give at least one run folder")
    truth = read_truth(cohort)
    done = []
    for name, path in runs.items():
        run = read_run(path, name)
        log.info("validating run %s (%s) against %s", name, path, cohort)
        done.append(validate_run(run, truth, config))
    return ValidationResult(
        cohort=str(cohort), synth=dict(truth.planted.get("config", {})),
        config=_plain_config(config), runs=tuple(done), provenance=dict(provenance or {}))


def _plain_config(config: ValidationConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


# ---------------------------------------------------------------------------------------------
# files


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _frame(rows, columns) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(list(rows), columns=["run", *columns])


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def headline(run: RunValidation) -> str:
    """The run's InterMAT bias in one plain sentence."""
    r = run.row("participant", "intermat_pct")
    if not r["n"] or not math.isfinite(r["bias_pct"]):
        return f"{run.name}: no participant InterMAT to compare."
    side = "too high" if r["bias"] > 0 else "too low"
    how = (f"is {abs(r['bias_pct']):.1f} % {side} on average" if abs(r["bias_pct"]) >= 0.05
           else "equals truth on average")
    return (f"With {run.name.replace('_', ' ')}, InterMAT {how} "
            f"({r['mean_measured']:.2f} % measured vs {r['mean_truth']:.2f} % true; "
            f"bias {r['bias']:+.2f} percentage points, limits of agreement "
            f"{r['loa_low']:+.2f} to {r['loa_high']:+.2f}; r = {r['pearson_r']:.3f}; "
            f"n = {r['n']}).")


def summary_markdown(result: ValidationResult) -> str:
    """A short Markdown summary: the InterMAT sentence per run, the participant metrics,
    the muscle metrics pooled over muscles, grade agreement and the odds ratios."""
    p = result.provenance
    lines = ["# Measured metrics against truth", ""]
    lines.append(f"Cohort `{result.cohort}` (synth: "
                 + ", ".join(f"{k} {v}" for k, v in result.synth.items()
                             if k in ("participants", "seed", "shape", "spacing_mm",
                                      "noise_fraction", "myopathy"))
                 + ")" + (f"; {p['created']}" if p.get("created") else "")
                 + (f"; myocohort {p['version']}" if p.get("version") else "") + ".")
    lines.append(f"Mercuri mapping: {list(result.config['mercuri_thresholds'])} on "
                 f"{result.config['mercuri_basis']} (truth grades recomputed with it).")
    lines.append("")
    for run in result.runs:
        lines.append(f"- {headline(run)}")
    for run in result.runs:
        lines += ["", f"## {run.name} (`{run.source}`)", "",
                  f"{run.participants} participants ({run.participants_missing} of the truth "
                  f"missing), {run.muscles_paired} muscles paired ({run.muscles_missing} "
                  f"missing from the labels, {run.muscles_extra} extra)"
                  + (f"; {run.grades_regraded} grades regraded to the mapping"
                     if run.grades_regraded else "") + ".", "",
                  "| level | metric | bias | bias % of truth | limits of agreement | r | n |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in run.agreement:
            if r["level"] == "participant" or r["muscle"] == ALL_MUSCLES:
                lines.append(f"| {r['level']} | {r['metric']} | {_fmt(r['bias'], '+.3g')} | "
                             f"{_fmt(r['bias_pct'], '+.1f')} | {_fmt(r['loa_low'], '+.3g')} to "
                             f"{_fmt(r['loa_high'], '+.3g')} | {_fmt(r['pearson_r'], '.3f')} | "
                             f"{r['n']} |")
        g = run.grades
        lines += ["", f"Mercuri grades: {_fmt(g['exact_pct'], '.1f')} % equal, "
                  f"{_fmt(g['within_one_pct'], '.1f')} % within one grade, quadratic-weighted "
                  f"kappa {_fmt(g['kappa_quadratic'], '.3f')} (n {g['n']})."]
        for model, f in run.fits.items():
            rows = [o for o in run.odds_ratios if o["model"] == model
                    and (o["exposure"] or o["planted_or"] != 1.0)]
            lines += ["", f"Odds ratios, {model} model (outcome {f.get('outcome')}, n "
                      f"{f.get('n')}, status {f.get('status')}; site SD "
                      f"{_fmt(f.get('group_sd'), '.3f')}, planted "
                      f"{_fmt(f.get('planted_site_sd'), '.3f')})"
                      + ("" if f.get("planted") else ": no planted model for this outcome")
                      + ":", "",
                      "| term | planted OR | fitted OR (95 % CI) | attenuation | OR on true "
                      "exposures | attenuation vs that | expected (r) |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            for o in rows:
                lines.append(
                    f"| {o['term']} | {_fmt(o['planted_or'], '.3f')} | "
                    f"{_fmt(o['fitted_or'], '.3f')} ({_fmt(o['ci_low'], '.2f')}-"
                    f"{_fmt(o['ci_high'], '.2f')}) | {_fmt(o['attenuation'], '.2f')} | "
                    f"{_fmt(o['truth_fit_or'], '.3f')} | "
                    f"{_fmt(o['attenuation_vs_truth_fit'], '.2f')} | "
                    f"{_fmt(o['expected_attenuation'], '.3f')} |")
        if not run.fits:
            lines += ["", "No fit.json: odds ratios left out."]
    lines += ["", "Files: agreement.csv (every metric, pooled and per muscle), "
              "grade_confusion.csv, odds_ratios.csv, validation.json, figures/.", ""]
    return "\n".join(lines)


def _figures(result: ValidationResult, config: ValidationConfig) -> dict[str, bytes]:
    from pipelines.report.figures import render
    from pipelines.validation.figures import Panel, bland_altman_figure, grade_confusion_figure

    out: dict[str, bytes] = {}
    for run in result.runs:
        for level, frame, metrics in (
                ("participants", run.participants_paired_frame, config.participant_metrics),
                ("muscles", run.muscles_paired_frame,
                 [m for m in config.muscle_metrics if m != "mercuri_grade"])):
            panels = []
            for metric in metrics:
                m = frame[f"{metric}_measured"].to_numpy(dtype=float)
                t = frame[f"{metric}_truth"].to_numpy(dtype=float)
                panels.append(Panel(metric, m, t, agreement(m, t, z=config.loa_z)))
            if not panels:
                continue
            what = "participant" if level == "participants" else "muscle (every muscle pooled)"
            fig = bland_altman_figure(panels, f"{run.name}: {what} metrics against truth")
            for fmt, data in render(fig, config.figure_formats).items():
                out[f"bland_altman_{run.name}_{level}.{fmt}"] = data
    fig = grade_confusion_figure({r.name: r.grades["confusion"] for r in result.runs},
                                 "Mercuri grades: truth against measured")
    for fmt, data in render(fig, config.figure_formats).items():
        out[f"grade_confusion.{fmt}"] = data
    return out


def write_validation(result: ValidationResult, out: str | Path,
                     config: ValidationConfig) -> dict[str, Path]:
    """Write ``validation.json`` (every number), ``agreement.csv``, ``grade_confusion.csv``,
    ``odds_ratios.csv``, ``summary.md`` and ``figures/`` (Bland-Altman per run and level, grade
    confusion) into ``out`` (created), each file atomically.  Returns name -> path."""
    import pandas as pd

    from pipelines._io import write_bytes_atomic, write_json_atomic, write_text_atomic

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["validation.json"] = write_json_atomic(out / "validation.json",
                                                 _jsonable(result.to_dict()), indent=2)
    agree = _frame((r for run in result.runs for r in run.agreement), AGREEMENT_COLUMNS)
    paths["agreement.csv"] = write_text_atomic(out / "agreement.csv",
                                               agree.to_csv(index=False))
    conf = pd.DataFrame([{"run": run.name, "true_grade": i, "measured_grade": j, "muscles": c}
                         for run in result.runs
                         for i, row in enumerate(run.grades["confusion"])
                         for j, c in enumerate(row)])
    paths["grade_confusion.csv"] = write_text_atomic(out / "grade_confusion.csv",
                                                     conf.to_csv(index=False))
    odds = _frame((r for run in result.runs for r in run.odds_ratios), ODDS_COLUMNS)
    paths["odds_ratios.csv"] = write_text_atomic(out / "odds_ratios.csv",
                                                 odds.to_csv(index=False))
    paths["summary.md"] = write_text_atomic(out / "summary.md", summary_markdown(result))
    for name, data in _figures(result, config).items():
        paths[f"figures/{name}"] = write_bytes_atomic(out / "figures" / name, data)
    return paths
