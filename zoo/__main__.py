"""``python -m zoo plugins``: list the installed method plugins and where they come from."""

from __future__ import annotations

import sys

from zoo.plugins import available_methods


def list_plugins() -> str:
    rows = [("name", "class", "distribution")]
    for entry in sorted(available_methods().values(), key=lambda e: e.name):
        cls = f"{entry.cls.__module__}.{entry.cls.__qualname__}"
        rows.append((entry.name, cls, f"{entry.distribution} {entry.version}".strip()))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


if __name__ == "__main__":
    if sys.argv[1:] != ["plugins"]:
        sys.exit("usage: python -m zoo plugins")
    print(list_plugins())
