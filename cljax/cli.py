"""Command-line helpers: ``--import`` of user modules, ``--list``, and readable messages for
unknown config fields (``cljax.main`` is the command itself)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from cljax import registry


def imported_modules(argv: Sequence[str]) -> list[str]:
    """The modules named by ``--import=NAME`` or ``--import NAME`` (repeatable), in order. They are
    imported before the config is read, so what they register is known to it."""
    names = []
    for k, arg in enumerate(argv):
        if arg.startswith("--import="):
            names.append(arg.split("=", 1)[1])
        elif arg == "--import" and k + 1 < len(argv):
            names.append(argv[k + 1])
    return names


def import_user_modules(argv: Sequence[str]) -> None:
    registry.import_modules(imported_modules(argv))


def field_paths(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf field of a ConfigDict as ``{dotted.path: default}``."""
    paths = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            paths.update(field_paths(value, path + "."))
        else:
            paths[path] = value
    return paths


def missing_field(error: Exception) -> str:
    """The field name in ml_collections' AttributeError/KeyError (which quotes and escapes it and
    may add its own suggestion on another line)."""
    text = str(error).replace("\\n", "\n").replace("\\'", "'").replace('\\"', '"')
    match = re.search(r"[\"']*([A-Za-z_][A-Za-z0-9_]*)", text)
    return match.group(1) if match else text.strip("\"'\\")


def unknown_field_message(argv: Sequence[str], error: Exception, config: Any) -> str:
    """One line: the override that names a missing field, and the closest existing fields."""
    name = missing_field(error)
    given = [a.split("=")[0][len("--config.") :] for a in argv if a.startswith("--config.")]
    path = next((g for g in given if name in g.split(".")), name)
    fields = list(field_paths(config))
    close = difflib.get_close_matches(path, fields, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "python -m cljax.main --list shows every field"
    return f"--config.{path}: the config has no field {path!r}; {hint}"


def listing(config: Any) -> str:
    """What ``python -m cljax.main --list`` prints: strategies, datasets, models, config fields."""
    from cljax.strategies import STRATEGIES

    names = registry.registered()
    lines = ["strategies (--config.strategies=a,b; hyperparameters under --config.<strategy>.<field>):"]
    for name, spec in STRATEGIES.items():
        lines.append(f"  {name:<12} {spec.doc}")
    lines.append("datasets (--config.dataset): " + ", ".join(names["datasets"]))
    lines.append("models (--config.model): " + ", ".join(names["models"]))
    lines.append("config fields and their defaults (--config.<field>=value):")
    for path, default in field_paths(config).items():
        lines.append(f"  {path} = {default!r}")
    return "\n".join(lines)
