"""Users' code by dotted path, `package.module:name`: one loader for protocols, editors and
learners, so each says the same thing when a path is wrong."""
from __future__ import annotations

import importlib


def import_dotted(path: str):
    """The object at `package.module:name`; ImportError naming the path and the fix."""
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot import {path!r} ({e}); write 'package.module:name' with the package "
                          "importable") from None
