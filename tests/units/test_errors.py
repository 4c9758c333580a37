"""The package's errors (mpesa_sync/errors.py): one base, no exit codes.

No database (marked ``no_database``).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

from mpesa_sync import errors

pytestmark = pytest.mark.no_database

PACKAGE = Path(__file__).resolve().parents[2] / "mpesa_sync"


def test_message_helpers() -> None:
    assert errors.with_sqlstate("refused", "23514") == "refused (SQLSTATE 23514)"
    assert errors.with_sqlstate("refused", None) == "refused"
    assert errors.first_line(ValueError("first\nDETAIL: second")) == "first"
    assert errors.first_line(ValueError()) == "ValueError"


def _package_modules() -> list[str]:
    names = ["mpesa_sync"]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="mpesa_sync."):
        if not info.name.endswith("__main__"):  # importing it runs the CLI
            names.append(info.name)
    return names


def test_every_error_of_the_package_derives_from_the_base_and_carries_no_exit_code() -> None:
    found = []
    for name in _package_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.startswith("mpesa_sync")
            ):
                found.append(value)
    assert errors.HttpError in found and errors.DatabaseError in found
    assert [e for e in found if not issubclass(e, errors.MpesaSyncError)] == []
    assert [e for e in found if hasattr(e, "exit_code")] == []
    assert {e.__module__ for e in found} == {"mpesa_sync.errors"}
