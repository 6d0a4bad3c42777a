"""A run's records on disk: one Parquet part per finished round, merged into records.parquet.

A part is named `<stem>-<round:04d>.parquet`, the stem naming what the rounds belong to (a
sweep point `000`, or a point's generation `000-g02`). Parts are written whole then renamed,
so a crash leaves a round either finished or absent; resuming reads the finished rounds back
and checks them (contiguous from round 0, readable, each holding its own round).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from agents.records import Record, records_from_frame, to_frame
from evolution.outputs import OutputError


def parts_of(out: Path, stem: str) -> list[tuple[Path, int]]:
    """(file, round) of `stem`'s parts, by round."""
    pat = re.compile(re.escape(stem) + r"-(\d{4})\.parquet")
    found = [(f, int(m.group(1))) for f in (out / "parts").glob(f"{stem}-*.parquet") if (m := pat.fullmatch(f.name))]
    return sorted(found, key=lambda fr: fr[1])


def finished_records(out: Path, stem: str) -> list:
    """The records of `stem`'s finished rounds, checked: parts for rounds 0..k with none missing,
    each readable and holding its own round. A problem stops the run with the file and the way
    to recover (delete it and the later parts: those rounds are redone)."""
    found = parts_of(out, stem)
    redo = lambda r: ", ".join(f.name for f, x in found if x >= r)
    for want, (_, got) in enumerate(found):
        if got != want:
            raise OutputError(f"{str(out / 'parts')!r}: round {want}'s part ({stem}-{want:04d}.parquet) is "
                              f"missing but later rounds are there; delete {redo(want)} and rerun to redo them")
    records = []
    for f, r in found:
        try:
            got = records_from_frame(pd.read_parquet(f))
        except Exception as e:   # pyarrow raises several kinds for a damaged file
            raise OutputError(f"{str(f)!r} cannot be read ({type(e).__name__}: {str(e)[:120]}); delete "
                              f"{redo(r)} and rerun to redo those rounds") from None
        if not got or any(x.round != r for x in got):
            raise OutputError(f"{str(f)!r} does not hold round {r}'s records; delete {redo(r)} and rerun to redo "
                              "those rounds")
        records += got
    return records


def write_part(out: Path, stem: str, rnd: int, records) -> None:
    (out / "parts").mkdir(exist_ok=True)
    final = out / "parts" / f"{stem}-{rnd:04d}.parquet"
    tmp = final.with_suffix(".tmp")
    to_frame(records, Record).to_parquet(tmp, index=False)
    tmp.replace(final)


def merge_parts(out: Path) -> pd.DataFrame:
    """Every part, in name order, as records.parquet (written whole then renamed)."""
    files = sorted((out / "parts").glob("*.parquet"))
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else to_frame([], Record)
    tmp = out / "records.parquet.tmp"
    df.to_parquet(tmp, index=False)
    tmp.replace(out / "records.parquet")
    return df
