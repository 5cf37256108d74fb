"""The leaderboard site and a report, opened from disk in headless Chromium (issue 14).

Checks what only a browser shows: no console errors, every table's headers sort by the cells'
underlying numbers in both directions, the filter box narrows rows, model links open the right
pages, nothing loads from the network, and at 420 px nothing is cut off (wide tables scroll inside
their own box, the pass@1 column stays on screen, chart text is readable). Needs `chromium` and
`chromium-driver` (Debian packages; `make install` installs them). The docs screenshots come from
scripts/docs_screenshots.py with the same client.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from codediff.cli import main
from tests.leaderboard_fixtures import make_all
from tests.webdriver import Browser, find_browser

REFERENCE = Path(__file__).resolve().parent.parent / "reports" / "reference" / "crossover-tiny-5m"
BROWSER = find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="chromium and chromedriver are not installed: apt-get install "
                            "chromium chromium-driver (make install does it)")

# Per tbody: each cell's sort key in column `col`, as the page's script reads it.
KEYS = """
const [table, col] = arguments;
return [...table.tBodies].map(tb => [...tb.rows].filter(r => !r.hidden).map(r => {
  const c = r.cells[col]; const raw = c.dataset.v !== undefined ? c.dataset.v : c.textContent.trim();
  if (raw === "" || raw === "–") return null;
  return c.dataset.v !== undefined && !isNaN(Number(raw)) ? Number(raw) : raw.toLowerCase();
}));"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    res = make_all(d)
    out = d / "site"
    assert main(["leaderboard", *map(str, res.values()), str(REFERENCE), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def browser():
    b = Browser(*BROWSER)
    yield b
    b.close()


def _errors(b: Browser) -> list[dict]:
    return [e for e in b.console() if e.get("level") == "SEVERE"]


def _check_sorting(b: Browser) -> int:
    tables = b.find_all("table.sortable")
    assert tables
    checked = 0
    for table in tables:
        heads = b.js("return [...arguments[0].tHead.rows[0].cells]", table)
        for col, th in enumerate(heads):
            seen = []
            for _ in range(2):
                b.click(th)
                direction = b.js("return arguments[0].getAttribute('aria-sort')", th)
                for keys in b.js(KEYS, table, col):
                    known = [k for k in keys if k is not None]
                    assert keys[:len(known)] == known, "missing values must sort last"
                    if all(isinstance(k, (int, float)) for k in known):
                        want = sorted(known, reverse=direction == "descending")
                        assert known == want, (col, direction, known)
                seen.append(direction)
            assert sorted(seen) == ["ascending", "descending"]
            checked += 1
    return checked


def _check_phone(b: Browser, page: str, has_pass_at_1: bool) -> None:
    b.viewport(420, 900)
    b.open(page)
    width = b.js("return window.innerWidth")
    assert width == 420
    assert b.js("return document.documentElement.scrollWidth") <= width, "page scrolls sideways"
    boxes = b.js("return [...document.querySelectorAll('.scroll')].map(e => "
                 "[e.getBoundingClientRect().right, e.scrollWidth > e.clientWidth])")
    assert boxes and all(right <= width for right, _ in boxes)
    assert any(scrolls for _, scrolls in boxes)  # the wide tables scroll inside their boxes
    # the first score column and the model names are on screen
    right = b.js("const th = [...document.querySelectorAll('th')].find(t => "
                 "/pass@1/.test(t.textContent)); return th && th.getBoundingClientRect().right")
    assert (right is not None) == has_pass_at_1 and (right or 0) <= width
    sizes = b.js("return [...document.querySelectorAll('svg.chart text')].map(t => "
                 "t.getBoundingClientRect().height)")
    assert not sizes or min(sizes) >= 9, f"chart text {min(sizes):.1f} px tall"


def test_leaderboard_and_report_in_a_browser(site, browser):
    b = browser
    index = (site / "index.html").as_uri()
    b.viewport(1300, 1000)
    b.open(index)
    assert b.js("return document.title") == "codediff leaderboard"
    assert b.js("return performance.getEntriesByType('resource').map(e => e.name)") == []
    assert _check_sorting(b) > 20

    # the filter box narrows the humaneval rows, and clearing it brings them back
    box = b.find_all("input.filter")[0]
    b.type(box, "tau0.7")
    visible = b.js("return [...document.querySelectorAll('#board-humaneval tbody tr')]"
                   ".filter(r => !r.hidden).map(r => r.cells[1].textContent)")
    assert len(visible) == 1 and "mdm-tau0.7" in visible[0]
    b.js("arguments[0].value = ''; arguments[0].dispatchEvent(new Event('input'))", box)
    assert b.js("return [...document.querySelectorAll('#board-humaneval tbody tr')]"
                ".filter(r => !r.hidden).length") == 4

    # every model link opens that model's page
    links = b.js("return [...document.querySelectorAll('td.sticky a')].map(a => "
                 "[a.getAttribute('href'), a.textContent])")
    assert len(links) >= 10
    for href, label in dict(links).items():
        b.open(index)
        a = [e for e in b.find_all("td.sticky a")
             if b.js("return arguments[0].getAttribute('href')", e) == href]
        b.click(a[0])  # code-choice rows of one run share that run's page
        assert b.js("return location.href").endswith(href)
        h1 = b.js("return document.querySelector('h1').textContent")
        assert h1 == label or h1 == f"code choice: {label.split('@')[0]}", (h1, label)
        assert b.js("return performance.getEntriesByType('resource').length") == 0
        assert not _errors(b)

    # the model pages (comparison reports: a result's; a run's training and code choice) sort too
    charts = next(h for h, _ in links if "<svg" in (site / h).read_text())
    result_page, report = (site / links[0][0]).as_uri(), (site / charts).as_uri()
    for page in (result_page, report):
        b.open(page)
        assert _check_sorting(b) > 5
        assert not _errors(b)

    for page, has_pass_at_1 in ((index, True), (result_page, True), (report, False)):
        _check_phone(b, page, has_pass_at_1)
        assert not _errors(b)
