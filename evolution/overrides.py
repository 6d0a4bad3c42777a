"""`--set key=value`: the one parser for every command's overrides (run configs, pretraining
settings, an editor's hparams). Values are read as YAML, the config files' own language
(`3`, `0.5`, `true`, `[0, 1]`, `{kind: ray}`, `null`), except that a number in exponent form
(`1e-3`, which YAML 1.1 leaves a string) is a number; anything else stays text.
"""
from __future__ import annotations

import copy

import yaml


def parse_value(text: str):
    v = yaml.safe_load(text)
    if isinstance(v, str):
        try:
            return float(v) if v.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity") else v
        except ValueError:
            return v
    return v


def parse_sets(pairs: list[str] | None, example: str = "rounds=3") -> list[tuple[list[str], object]]:
    """[(dotted key split into parts, value)] in order; ValueError naming a malformed pair."""
    out = []
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise ValueError(f"--set {pair!r}: write KEY=VALUE, e.g. --set {example}")
        out.append((key.strip().split("."), parse_value(raw.strip())))
    return out


def flat_sets(pairs: list[str] | None, example: str = "v_steps=40") -> dict:
    """{key: value} for settings that are not nested (an editor's hparams)."""
    return {".".join(parts): v for parts, v in parse_sets(pairs, example)}


def apply_sets(raw: dict, pairs: list[str] | None) -> dict:
    """The overrides applied to a copy of a raw config mapping (nested keys with dots)."""
    out = copy.deepcopy(raw)
    for parts, value in parse_sets(pairs):
        d = out
        for p in parts[:-1]:
            if d.get(p) is None:
                d[p] = {}
            if not isinstance(d[p], dict):
                raise ValueError(f"--set {'.'.join(parts)}: {p!r} is {d[p]!r}, not a mapping; set it whole "
                                 f"(e.g. --set '{p}={{...}}')")
            d = d[p]
        d[parts[-1]] = value
    return out
