"""The README's screenshots: a leaderboard and a report, each at 1300 px and 420 px wide, in
headless Chromium (the same WebDriver client as tests/test_browser.py).

    codediff demo
    codediff leaderboard demo-out/results reports/reference/crossover-tiny-5m --out demo-out/site
    python scripts/docs_screenshots.py demo-out/site/index.html demo-out/report.html --out docs/img
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.webdriver import Browser, find_browser  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("leaderboard", help="the site's index.html")
    ap.add_argument("report", help="a report .html")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--height", type=int, default=1000, help="viewport height at 1300 px")
    args = ap.parse_args()
    found = find_browser()
    if not found:
        sys.exit("chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    b = Browser(*found)
    try:
        for name, page in (("leaderboard", args.leaderboard), ("report", args.report)):
            for width, height in ((1300, args.height), (420, 900)):
                b.viewport(width, height)
                b.open(Path(page).resolve().as_uri())
                b.screenshot(out / f"{name}-{width}.png")
                print(out / f"{name}-{width}.png")
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
