"""Short names for groups of runs: the method plus only what differs from its published defaults
("shortcut: bootstrap_weight=8, levels=quarter_large"), or a name the user gives (bench.toml's
`[report.names]`, `bench report --name LABEL=NAME`). Every key stays in metrics.csv; a label is
for reading, never longer than MAX_LABEL characters."""

from __future__ import annotations

import math

from bench.errors import BenchError

MAX_LABEL = 60  # characters: a label fits a legend at column width and a table cell


def _normal(value) -> str | None:
    """A value as the label shows it and compares it: None where the group does not have the key."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if text in ("", "-", "nan", "None"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:g}"


def published_defaults(method: str, config: dict) -> dict[str, str]:
    """`section.key` -> default for a run of `method`: the method's Options fields (resolved for its
    recipe where it has one: the authors' recipe is a published default of its own) and the data,
    model, train and eval dataclasses. Empty for a method this code no longer knows."""
    from dataclasses import MISSING, fields

    from bench.config import SECTIONS

    out = {f"{s}.{f.name}": _normal(f.default) for s, cls in SECTIONS.items() for f in fields(cls) if f.default is not MISSING}
    try:
        from methods import get_method

        options = get_method(method).Options
    except Exception:  # a method renamed since the CSV was written: no defaults, every differing key shows
        return out
    recipe = _normal(config.get("method.recipe"))
    try:
        resolved = options(recipe=recipe) if recipe and "recipe" in {f.name for f in fields(options)} else options()
    except Exception:
        resolved = options()
    out.update({f"method.{f.name}": _normal(getattr(resolved, f.name)) for f in fields(resolved)})
    if recipe:  # the recipe itself is compared with the method's default recipe
        out["method.recipe"] = _normal(getattr(options(), "recipe", None))
    return out


def _key_name(key: str) -> str:
    return key.removeprefix("method.")


def _fit(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[:MAX_LABEL - 1].rstrip(" ,=") + "…"


def variant_labels(configs: dict[str, dict], keys: list[str], names: dict[str, str] | None = None) -> dict[str, str]:
    """group id -> label. configs: group id -> {key: value} (the group's config, or only its group keys
    as metrics.csv records them); keys: the keys that tell the groups apart (frames.group_keys).
    A group's label: its method, then `key=value` for each settable key whose value differs from the
    method's published default (the profile shows where groups differ in it); keys derived from
    others are added only where two labels would otherwise be equal. names: generated label (or group
    id) -> the user's name for it. Labels are unique and at most MAX_LABEL characters."""
    names = names or {}
    labels: dict[str, list[str]] = {}
    extra: dict[str, list[str]] = {}
    for group, config in configs.items():
        method = str(config.get("method", "?"))
        defaults = published_defaults(method, config)
        parts, derived = [], []
        for k in keys:
            if k == "method":
                continue
            value = _normal(config.get(k))
            if value is None:
                continue
            if k == "profile":
                parts.append(f"profile={value}")
            elif k in defaults:
                if value != defaults.get(k):
                    parts.append(f"{_key_name(k)}={value}")
            else:
                derived.append(f"{_key_name(k)}={value}")
        labels[group], extra[group] = [method, *parts], derived
    text = {g: _join(p) for g, p in labels.items()}
    for label in set(text.values()):
        same = [g for g in text if text[g] == label]
        if len(same) > 1:  # derived keys tell them apart
            for g in same:
                text[g] = _join(labels[g] + extra[g])
    out = {}
    for g in configs:
        given = names.get(text[g], names.get(g))
        out[g] = _fit(given if given else text[g])
    for label in set(out.values()):  # still equal (or equal once cut to length): number them
        same = sorted(g for g in out if out[g] == label)
        if len(same) > 1:
            for i, g in enumerate(same):
                out[g] = _fit(label[:MAX_LABEL - 5]) + f" #{i + 1}"
    return out


def _join(parts: list[str]) -> str:
    return parts[0] + (": " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def parse_names(items: list[str] | None, toml_names: dict | None = None) -> dict[str, str]:
    """bench.toml's [report.names] table updated by `--name LABEL=NAME` (the last `=` splits them, so a
    label's own `key=value` parts stay whole)."""
    out = {str(k): str(v) for k, v in (toml_names or {}).items()}
    for item in items or []:
        label, sep, name = item.rpartition("=")
        if not sep or not label.strip() or not name.strip():
            raise BenchError(f"--name takes LABEL=NAME (the label as the report prints it), got {item!r}.")
        out[label.strip()] = name.strip()
    for name in out.values():
        if len(name) > MAX_LABEL:
            raise BenchError(f"A group name is at most {MAX_LABEL} characters, got {len(name)}: {name!r}.")
    return out
