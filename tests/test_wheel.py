"""The wheel as a DBA meets it: built, installed (not editable) in a fresh
virtualenv, the migrations applied by yoyo itself from the folder that
`mpesa-sync migrations-dir` prints, then `mpesa-sync verify` and `status`.

The fresh virtualenv gets the wheel and nothing else from pip (no network
here); its dependencies come from this environment through a .pth file,
which puts them after the virtualenv's own site-packages, so `mpesa_sync`
itself is the wheel's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mpesa_sync import migrations
from mpesa_sync.resources import migration_ids
from tests.support.database import Database

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    hatchling = Path(sys.executable).with_name("hatchling")
    built = run(hatchling, "build", "-t", "wheel", "-d", out, cwd=ROOT)
    assert built.returncode == 0, built.stderr
    [wheel] = out.glob("*.whl")
    venv = out / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=out)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = run(
        sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
        "--no-index", wheel, cwd=out,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=out)
    Path(site.stdout.strip(), "dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return venv


def test_yoyo_applies_the_packaged_migrations_then_verify_and_status_pass(
    venv: Path, host_db: Database, tmp_path: Path
) -> None:
    mpesa_sync = venv / "bin" / "mpesa-sync"
    imported = run(venv / "bin" / "python", "-c", "import mpesa_sync; print(mpesa_sync.__file__)",
                   cwd=tmp_path)  # fmt: skip
    assert imported.stdout.startswith(str(venv)), imported.stdout  # the wheel, not the checkout

    folder = run(mpesa_sync, "migrations-dir", cwd=tmp_path)
    assert folder.returncode == 0, folder.stderr
    packaged = Path(folder.stdout.strip())
    assert packaged.is_relative_to(venv) and packaged.name == "_migrations"
    assert sorted(p.name for p in packaged.iterdir()) == sorted(
        p.name for p in (ROOT / "migrations").iterdir()
    )

    yoyo = Path(sys.executable).with_name("yoyo")
    url = migrations.yoyo_url(host_db.dsn)
    host_db.execute("CREATE SCHEMA mpesa_sync_yoyo")  # as docs/install.md says
    applied = run(yoyo, "apply", "-b", "--no-config-file", "-d", url, packaged, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    recorded = host_db.query(
        "SELECT migration_id FROM mpesa_sync_yoyo._yoyo_migration ORDER BY migration_id"
    )
    assert [r["migration_id"] for r in recorded] == migration_ids()

    bar = host_db.add_bar("after yoyo")
    host_db.add_credentials(bar, active=True)
    verified = run(mpesa_sync, "verify", "--dsn", host_db.dsn, "--format", "json", cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["consistent"] is True
    assert host_db.enabled(bar) is True  # the triggers yoyo installed are at work
    status = run(mpesa_sync, "status", "--dsn", host_db.dsn, "--format", "json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["migrations"]["pending"] == []
