"""The development queries (``sql/dev/queries/*.sql``), apart from the product's."""

from __future__ import annotations

import functools

from mpesa_sync.queries import load_queries
from mpesa_sync.resources import resource_dir


@functools.cache
def _dev_queries() -> dict[str, str]:
    return load_queries(resource_dir("sql") / "dev" / "queries")


def query(name: str) -> str:
    """The text of the named development query."""
    return _dev_queries()[name]
