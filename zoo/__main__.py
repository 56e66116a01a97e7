"""``python -m zoo plugins``: list the installed method plugins and where they come from,
and the broken ones that were skipped (with their error)."""

from __future__ import annotations

import sys

from zoo.plugins import available_methods, broken_plugins


def list_plugins() -> str:
    rows = [("name", "class", "distribution")]
    for entry in sorted(available_methods().values(), key=lambda e: e.name):
        cls = f"{entry.cls.__module__}.{entry.cls.__qualname__}"
        rows.append((entry.name, cls, f"{entry.distribution} {entry.version}".strip()))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    broken = broken_plugins()
    if broken:
        lines += ["", "broken (skipped):", *(f"  {plugin.describe()}" for _, plugin in sorted(broken.items()))]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] != ["plugins"]:
        sys.exit("usage: python -m zoo plugins")
    print(list_plugins())
