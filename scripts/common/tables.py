"""A record's table as markdown, for a script's own printout (the docs render the same tables: docs/hooks.py)."""

from __future__ import annotations


def render(table: dict[str, list]) -> str:
    """``{"columns": [...], "rows": [[...]]}`` as a markdown table."""
    lines = ["| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(row) + " |" for row in table["rows"]]
    return "\n".join(lines)
