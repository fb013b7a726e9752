"""The files beside the report: every figure as PNG, SVG and PDF (they exist, parse and are
not blank), the publication tables as CSV, Markdown and LaTeX, and the page itself (numbered
figures and tables, integer counts, no Python list syntax, a real title)."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from pipelines.report import figures as F
from pipelines.report.labels import Labels


def _figures(results):
    files = sorted((results / "figures").iterdir())
    stems = sorted({f.stem for f in files})
    return files, stems


def _png_not_blank(blob: bytes) -> None:
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(blob)).convert("L"), dtype=float)
    assert im.shape[0] > 100 and im.shape[1] > 100
    assert im.std() > 8, "blank PNG"
    assert (im < 200).mean() > 0.01, "almost nothing drawn"


def _svg_ok(text: bytes) -> None:
    root = ET.fromstring(text)  # parses as XML
    assert root.tag.endswith("svg")
    drawn = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] in ("path", "use", "image")]
    texts = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "text"]
    assert len(drawn) > 10, "an SVG with nothing drawn"
    assert texts, "text is kept as text (editable)"


def _pdf_ok(blob: bytes) -> None:
    assert blob.startswith(b"%PDF-1.")
    assert blob.rstrip().endswith(b"%%EOF")
    assert b"startxref" in blob[-200:] and b"/Type /Page" in blob
    assert b"/FontFile2" in blob, "TrueType (Type 42) fonts embedded, as journals ask"
    assert len(blob) > 5000


def test_every_figure_is_numbered_and_written_in_every_format(small_report):
    results = small_report.parent
    files, stems = _figures(results)
    numbers = sorted(int(re.match(r"figure(\d+)_", s).group(1)) for s in stems)
    assert numbers == list(range(1, len(stems) + 1)) and len(stems) >= 9
    text = small_report.read_text()
    for stem in stems:
        png = results / "figures" / f"{stem}.png"
        _png_not_blank(png.read_bytes())
        # the page embeds exactly the PNG beside it
        assert base64.b64encode(png.read_bytes()).decode()[:2000] in text
        if stem.endswith("qc_overlays"):
            assert not (results / "figures" / f"{stem}.svg").exists()
            continue
        _svg_ok((results / "figures" / f"{stem}.svg").read_bytes())
        _pdf_ok((results / "figures" / f"{stem}.pdf").read_bytes())
        n = int(re.match(r"figure(\d+)_", stem).group(1))
        assert f"<b>Figure {n}.</b>" in text


def test_render_refuses_an_unknown_format():
    fig = F.calibration_plot(pd.DataFrame({"observed": [0.1, 0.2], "predicted_marginal":
                                           [0.1, 0.3], "predicted_conditional": [0.1, 0.25]}))
    with pytest.raises(ValueError, match="eps"):
        F.render(fig, ("png", "eps"))
    out = F.render(fig, ("svg",), dpi=72)
    _svg_ok(out["svg"])


def test_publication_tables_in_three_formats(small_report):
    res = small_report.parent
    for name in ("table1", "table_main_model", "table_pain_model", "table_strata"):
        csv = pd.read_csv(res / f"{name}.csv")
        md = (res / f"{name}.md").read_text()
        tex = (res / f"{name}.tex").read_text()
        assert len(csv) >= 3
        assert md.count("\n|") >= len(csv) + 1
        assert tex.count(r"\begin{") == tex.count(r"\end{") and tex.count("{") == \
            tex.count("}") - tex.count(r"\}") + tex.count(r"\{")
        assert r"\toprule" in tex and r"\bottomrule" in tex
        first = csv.iloc[:, 0].astype(str).str.strip()
        for label in first[:5]:
            assert label.replace("%", r"\%").replace("²", "$^{2}$").replace("³", "$^{3}$") \
                in tex or label in md
    t1 = pd.read_csv(res / "table1.csv").set_index("Characteristic")
    assert {"p", "SMD", "Test"} <= set(t1.columns)
    for row in ("Age, years, median (IQR)", "Female, n (%)", "Diabetes, n (%)",
                "Dyslipidaemia, n (%)", "Osteoporosis, n (%)", "Osteoarthritis, n (%)",
                "Activity, n (%)", "Site, n (%)", "LMM volume, cm³, median (IQR)",
                "InterMAT, %, median (IQR)", "LMM index, cm³/(kg/m²), median (IQR)"):
        assert row in t1.index, row
    assert t1.columns[1].startswith("No CBP (n = ") and t1.columns[2].startswith("CBP (n = ")
    assert re.fullmatch(r"\d+", t1.loc["n"].iloc[0])


def test_the_page_reads_like_a_paper(small_report):
    text = small_report.read_text()
    body = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert "<title>study_xyz</title>" in body and "myocohort report: work" not in body
    visible = re.sub(r"<pre>.*?</pre>", "", body, flags=re.S)  # the YAML config may quote
    assert "['" not in visible and "']" not in visible, "Python list syntax in the page"
    # counts are integers: the prevalence table's n and cases, the QC flag counts
    for caption in ("Prevalence of CBP by activity group", "Participants flagged by"):
        table = visible.split(caption, 1)[1].split("</table>", 1)[0]
        rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1])
        for row in rows:
            cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
            assert re.fullmatch(r"\d+", cells[1]), (caption, cells)
    for n in range(1, 5):
        assert f"<b>Table {n}.</b>" in body
    assert "Methods (generated from this run)" in body and "Provenance" in body
    assert "Quality control" in body


def test_forest_and_nomogram_ticks_are_round(small_workdir):
    """The nomogram's numeric scales carry round values only; categories all get a label."""
    from pipelines.report import analyses as A
    from pipelines.stats import ModelSpec, fit_model

    cohort = pd.read_parquet(small_workdir / "tables" / "cohort.parquet")
    cohort["activity"] = A.derive_activity(cohort["met_min_week"])
    fit = fit_model(cohort, ModelSpec(nagq=1))
    pts, total = A.nomogram(fit, cohort)
    for term, d in pts[pts["tick"]].groupby("term"):
        if d["x"].notna().all():
            x = d["x"].to_numpy()
            step = np.diff(np.sort(x))
            assert np.allclose(step, step[0]), term
            m = step[0] / 10 ** np.floor(np.log10(step[0]))
            assert any(np.isclose(m, s) for s in (1, 2, 2.5, 5)), (term, x)
    sex = pts[pts["term"] == "sex"]
    assert set(sex["value"]) == {"male", "female"} and sex["tick"].all()
    fig = F.nomogram_plot(pts, total, Labels())
    texts = [t for ax in fig.axes for t in ax.texts]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    male = next(t for t in texts if t.get_text() == "male").get_window_extent(renderer)
    female = next(t for t in texts if t.get_text() == "female").get_window_extent(renderer)
    assert not male.overlaps(female), "male and female printed on top of each other"
