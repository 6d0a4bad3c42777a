"""A benchmark writes its table into its own section of docs/benchmarks.md; a `--quick` smoke
run (the tests' small model) writes beside it and never replaces the measured figures."""
from __future__ import annotations

import sys

from bench.common import write_section


def test_a_quick_run_writes_its_own_section_and_keeps_the_measured_one(tmp_path, monkeypatch):
    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(sys, "argv", ["bench/asch_sweep.py"])
    write_section("asch-sweep", "Asch sweep", "measured table", doc=doc)
    monkeypatch.setattr(sys, "argv", ["bench/asch_sweep.py", "--quick"])
    write_section("asch-sweep", "Asch sweep", "smoke table", doc=doc)
    write_section("asch-sweep", "Asch sweep", "second smoke table", doc=doc)
    text = doc.read_text()
    assert "measured table" in text and "second smoke table" in text and "\nsmoke table" not in text
    assert text.count("<!-- bench:asch-sweep -->") == 1 and text.count("<!-- bench:asch-sweep-quick -->") == 1
    assert "## Asch sweep (--quick)" in text and "`python -m bench.asch_sweep --quick`" in text
    monkeypatch.setattr(sys, "argv", ["bench/asch_sweep.py"])
    write_section("asch-sweep", "Asch sweep", "measured again", doc=doc)
    text = doc.read_text()
    assert "measured again" in text and "measured table" not in text and "second smoke table" in text
