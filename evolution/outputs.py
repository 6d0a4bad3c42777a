"""Output dirs: checked writable before any work, and filled whole or not at all.

Found by trying as a new user would: an unwritable `--out` gave a traceback after the work
was done, and `knowevo edit --adapter` could leave the adapter written but not the model.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


class OutputError(ValueError):
    """An output path cannot be written, or a run dir holds files that cannot be resumed
    from; the message names the path and the fix."""


def check_writable(path: str | Path, what: str) -> Path:
    """`path` (a dir, made if missing) can take new files: tried by writing one."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex[:8]}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{what}: {str(path)!r} cannot be written ({e.strerror or e}); give a directory "
                          "you can write to") from None
    return path


def check_new_dir(path: str | Path, what: str) -> Path:
    """`path` does not exist yet (or is empty) and its parent can take it."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(f"{what}: {str(path)!r} exists and is not empty; give a new directory")
    check_writable(path.parent, what)
    return path


def staging(path: str | Path) -> Path:
    """A fresh temporary sibling of `path` to fill before `publish` renames it into place."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, path: str | Path) -> Path:
    path = Path(path)
    if path.exists():
        if any(path.iterdir()):
            raise OutputError(f"{str(path)!r} appeared while the work ran; the result is left in {str(tmp)!r}")
        path.rmdir()
    os.replace(tmp, path)
    return path


def write_whole(path: str | Path, text: str) -> Path:
    """Write a text file whole then rename it into place (a crash leaves the old file or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def agent_dir(parent: str | Path, name: str) -> Path:
    """Where an agent's checkpoint goes under `parent` (its name, spaces as underscores)."""
    return Path(parent) / name.replace(" ", "_")
