"""Named SQL queries, read once from ``sql/queries/*.sql``.

Each query starts with a ``-- name: some_name`` line; the lines up to the next
such header are its text. Python never builds SQL from strings: it names a
query here and passes parameters.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from mpesa_sync.resources import resource_dir

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(folder: Path) -> dict[str, str]:
    """Every named query in ``folder/*.sql``; a name defined twice is an error."""
    queries: dict[str, str] = {}
    for path in sorted(folder.glob("*.sql")):
        parts = _HEADER.split(path.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice ({path.name})")
            queries[name] = body.strip()
    return queries


@functools.cache
def _product_queries() -> dict[str, str]:
    return load_queries(resource_dir("sql") / "queries")


def query(name: str) -> str:
    """The text of the named query."""
    return _product_queries()[name]
