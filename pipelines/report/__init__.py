"""The cohort report: Table 1, the main, pain-intensity, stratified and interaction models as
publication tables, numbered figures (forest plot, OR heatmap, nomogram, box plots,
calibration, metrics by site), the myopathy analysis, a quality-control section (segmentation
confidence, QC flags, failures, extremes, label overlays) and the run's provenance, as one
self-contained HTML file plus CSV/Markdown/LaTeX tables, PNG/SVG/PDF figures and JSON of
every number shown.

Modules: :mod:`.build` (the config and the order of sections), :mod:`.analyses` and
:mod:`.table1` (numbers), :mod:`.tables` (formatting and table renderings), :mod:`.labels`
(readable names), :mod:`.figures` and :mod:`.ticks` (drawing), :mod:`.qc` and
:mod:`.provenance` (what the workdir says), :mod:`.sections` (the QC and provenance
sections) and :mod:`.page` (the HTML page and its files).
"""

from __future__ import annotations

from pipelines.report.build import ReportConfig, build_report

__all__ = ["ReportConfig", "build_report"]
