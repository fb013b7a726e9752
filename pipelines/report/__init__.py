"""The cohort report: Table 1, the main, pain-intensity, stratified and interaction models,
figures (forest plot, OR heatmap, nomogram, calibration, box plots, metrics by site) and the
myopathy analysis, as one self-contained HTML file plus CSV/JSON of every number shown."""

from __future__ import annotations

from pipelines.report.build import ReportConfig, build_report

__all__ = ["ReportConfig", "build_report"]
