"""The report as a reader sees it: the small workdir's page rendered by headless Chromium at
1,280 px, offline.  Every figure loads and is not blank, nothing logs an error, no table is
wider than the page or clips its text.

Chromium is installed from Debian's packages when missing and allowed (see
``tests/report/browser.py``); the test is skipped, saying why, where it cannot be.
"""

from __future__ import annotations

import pytest

from tests.report.browser import Browser, BrowserUnavailable, ensure_chromium

WIDTH = 1280

#: runs in the page: per image its load state and how much it varies (a blank image has one
#: colour), per table whether it is wider than its box or a cell clips its text
CHECKS_JS = r"""
(async () => {
  const images = [];
  for (const im of Array.from(document.images)) {
    try { await im.decode(); } catch (e) {}
    const w = Math.min(im.naturalWidth, 480);
    const h = Math.max(1, Math.round(im.naturalHeight * w / Math.max(1, im.naturalWidth)));
    let std = 0, colours = 0;
    if (im.complete && im.naturalWidth > 0) {
      const c = document.createElement('canvas'); c.width = w; c.height = h;
      const ctx = c.getContext('2d'); ctx.drawImage(im, 0, 0, w, h);
      const d = ctx.getImageData(0, 0, w, h).data;
      let s = 0, s2 = 0; const seen = new Set();
      for (let i = 0; i < d.length; i += 4) {
        const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
        s += y; s2 += y * y;
        if (seen.size < 64) seen.add((d[i] >> 4) + ',' + (d[i + 1] >> 4) + ',' + (d[i + 2] >> 4));
      }
      const n = d.length / 4; std = Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2));
      colours = seen.size;
    }
    const r = im.getBoundingClientRect();
    images.push({alt: im.alt, complete: im.complete, width: im.naturalWidth,
                 shown_width: r.width, std: std, colours: colours,
                 src: im.src.slice(0, 22)});
  }
  const caption = (box) => {
    const d = box.closest('details');
    const c = d ? d.querySelector('summary') : box.previousElementSibling;
    return (c ? c.textContent : '').slice(0, 70);
  };
  const overflow = [];
  const body = document.body.getBoundingClientRect();
  for (const t of Array.from(document.querySelectorAll('table'))) {
    const box = t.closest('.tblwrap') || t.parentElement;
    if (t.closest('details') && !t.closest('details').open) continue;
    const r = t.getBoundingClientRect();
    if (t.scrollWidth > box.clientWidth + 1 || r.right > body.right + 1)
      overflow.push('table "' + caption(box) + '": ' + t.scrollWidth + ' > ' + box.clientWidth);
    for (const cell of Array.from(t.querySelectorAll('td, th'))) {
      if (cell.scrollWidth > cell.clientWidth + 1)
        overflow.push('cell "' + cell.textContent.slice(0, 40) + '": ' + cell.scrollWidth +
                      ' > ' + cell.clientWidth);
    }
  }
  return {images: images, overflow: overflow, tables: document.querySelectorAll('table').length,
          figures: document.querySelectorAll('figure').length,
          page_width: document.documentElement.scrollWidth, viewport: window.innerWidth,
          title: document.title};
})()
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return ensure_chromium()
    except BrowserUnavailable as e:
        pytest.skip(f"no headless Chromium: {e}")


@pytest.mark.slow
def test_report_renders_offline_in_chromium(chromium, small_report, tmp_path):
    with Browser(chromium, width=WIDTH) as b:
        # offline: the page must need nothing from a network
        b.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                    "downloadThroughput": -1,
                                                    "uploadThroughput": -1})
        b.load(small_report.as_uri())
        for d in ("details",):  # open collapsed tables too: they must fit as well
            b.evaluate(f"document.querySelectorAll('{d}').forEach(e => e.open = true)")
        result = b.evaluate(CHECKS_JS)
        b.screenshot(tmp_path / "report.png")
        errors = b.errors
    assert errors == [], errors
    assert result["title"] == "study_xyz"
    assert result["figures"] >= 8 and len(result["images"]) == result["figures"]
    for im in result["images"]:
        assert im["complete"] and im["width"] > 0, im
        assert im["src"].startswith("data:image/png"), im  # embedded: opens offline
        assert im["std"] > 8 and im["colours"] >= 4, f"blank figure: {im}"
        assert im["shown_width"] <= WIDTH, im
    assert result["tables"] >= 10
    assert result["overflow"] == [], result["overflow"]
    assert result["page_width"] <= result["viewport"], "the page scrolls sideways"
    assert (tmp_path / "report.png").stat().st_size > 100_000
