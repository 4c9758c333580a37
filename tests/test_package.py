"""The package as a user installs and imports it: its public API, what each
entry point loads, what the wheel ships, and the boundaries between modules.
No database.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mpesa_sync

pytestmark = pytest.mark.no_database

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mpesa_sync"
MPESA_SYNC = Path(sys.executable).with_name("mpesa-sync")

# Never loaded by `import mpesa_sync`; the web stack and yoyo never by `verify`.
DRIVER = {"psycopg", "psycopg_binary", "yoyo", "tenacity", "cryptography", "prometheus_client"}
WEB = {"uvicorn", "starlette", "httpx", "psycopg_pool", "uvloop", "httptools"}


def loaded_after(code: str) -> set[str]:
    """Top-level packages in sys.modules once ``code`` has run in a fresh interpreter."""
    report = "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    script = f"import atexit, json, sys\natexit.register(lambda: {report})\n{code}\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


# -- the public API ------------------------------------------------------------------


def documented_names() -> list[str]:
    """The names README.md's "Python API" section lists, in backticks."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)`", section, re.MULTILINE)


def test_the_package_exports_what_the_readme_documents_and_nothing_else() -> None:
    names = documented_names()
    assert len(names) > 10
    assert sorted(names) == sorted(n for n in mpesa_sync.__all__ if n != "__version__")
    namespace: dict[str, object] = {}
    exec(f"from mpesa_sync import {', '.join(names)}", namespace)
    assert all(namespace[name] is getattr(mpesa_sync, name) for name in names)


def test_exported_functions_are_not_shadowed_by_modules() -> None:
    for name in ("migrations", "verification", "reconciliation", "credentials", "retry"):
        importlib.import_module(f"mpesa_sync.{name}")
    for name in ("migrate", "rollback", "verify", "reconcile", "save_settings"):
        assert callable(getattr(mpesa_sync, name)), name
        assert getattr(mpesa_sync, name).__name__ == name
    with pytest.raises(AttributeError):
        mpesa_sync.no_such_name  # noqa: B018


def test_importing_the_package_stays_light() -> None:
    loaded = loaded_after("import mpesa_sync")
    assert loaded & (DRIVER | WEB | {"click"}) == set()


# -- lazy commands -------------------------------------------------------------------


def test_help_loads_click_and_nothing_of_the_library() -> None:
    loaded = loaded_after(
        "from mpesa_sync.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert "click" in loaded
    assert loaded & (DRIVER | WEB) == set()


def test_help_lists_every_command() -> None:
    result = subprocess.run(
        [str(MPESA_SYNC), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    listed = re.findall(r"^  ([\w-]+) ", result.stdout.split("Commands:", 1)[1], re.MULTILINE)
    assert listed == [
        "alerts",
        "migrate",
        "migrations-dir",
        "prune",
        "realtime",
        "reconcile",
        "relay",
        "rollback",
        "settings",
        "status",
        "verify",
    ]


# -- what the wheel ships ------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [str(Path(sys.executable).with_name("hatchling")), "build", "-t", "wheel", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    [wheel] = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_ships_the_product_and_its_sql(wheel_names: list[str]) -> None:
    for name in (
        "mpesa_sync/cli.py",
        "mpesa_sync/relay/listener.py",
        "mpesa_sync/relay/static/index.html",
        "mpesa_sync/_sql/schema.sql",
        "mpesa_sync/_sql/queries/locks.sql",
        "mpesa_sync/_sql/optional/public_save_settings.sql",
        "mpesa_sync/_sql/optional/realtime_enable.sql",
        "mpesa_sync/_sql/optional/realtime_disable.sql",
        "mpesa_sync/static/mpesa-status.js",
        "mpesa_sync/_migrations/0001_mpesa_sync_base.sql",
    ):
        assert name in wheel_names
    migrations = {Path(n).name for n in wheel_names if n.startswith("mpesa_sync/_migrations/")}
    assert migrations == {p.name for p in (ROOT / "migrations").iterdir()}


def test_the_wheel_leaves_the_development_tooling_out(wheel_names: list[str]) -> None:
    assert [n for n in wheel_names if n.startswith("mpesa_sync/_sql/dev/")] == []
    assert not any(n.startswith(("tests/", "benchmarks/", "devtools/")) for n in wheel_names)


def test_the_package_folder_is_what_the_wheel_ships(wheel_names: list[str]) -> None:
    in_folder = {
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    shipped = {n for n in wheel_names if n.startswith("mpesa_sync/")}
    assert in_folder - shipped == set()


# -- boundaries between modules -------------------------------------------------------


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def product_modules() -> list[Path]:
    return list(PACKAGE.rglob("*.py"))


def test_the_product_never_imports_the_development_tooling() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in product_modules()
        if any(m.startswith(("devtools", "tests", "benchmarks")) for m in imports_of(p))
    ]
    assert offenders == []


def test_the_relay_is_entered_only_through_its_command() -> None:
    entering = {
        str(p.relative_to(ROOT))
        for p in product_modules()
        if "relay" not in p.relative_to(PACKAGE).parts[:-1]
        and any(m.startswith("mpesa_sync.relay") for m in imports_of(p))
    }
    assert entering == {"mpesa_sync/commands/relay.py"}


def test_no_test_module_imports_another() -> None:
    offenders = {}
    for path in (ROOT / "tests").glob("*.py"):
        bad = {m for m in imports_of(path) if re.match(r"tests\.(test_\w+|conftest)\b", m)}
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}
