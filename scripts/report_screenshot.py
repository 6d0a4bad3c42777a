"""Render a run's report.html as one PNG, for docs/img/ (a maintainer's tool, not a dependency).

    python scripts/report_screenshot.py runs/default/report.html docs/img/report.png

Headless Chromium is what a person's browser shows, but none can be installed on the build
machines (no browser, its download hosts unreachable), so this uses WeasyPrint (HTML/CSS to
PDF, on one tall page) and PyMuPDF (PDF to PNG):
`python -m venv /tmp/shot && /tmp/shot/bin/pip install weasyprint "pymupdf<2"`, then run this
with /tmp/shot/bin/python.
"""
import sys

import pymupdf
import weasyprint

PAGE = weasyprint.CSS(string="@page { size: 1150px 4200px; margin: 16px } body { margin: 0 auto }")


def main(src: str, dst: str) -> None:
    pdf = weasyprint.HTML(src).write_pdf(stylesheets=[PAGE])
    page = pymupdf.open(stream=pdf, filetype="pdf")[0]
    used = max((b[3] for b in page.get_text("blocks")), default=page.rect.height)
    clip = pymupdf.Rect(0, 0, page.rect.width, min(page.rect.height, used + 40))
    page.get_pixmap(dpi=80, clip=clip).save(dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
