"""Where the SQL sources live: inside an installed wheel, or in the checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The ``sql`` or ``migrations`` folder.

    A wheel carries them as ``mpesa_sync/_sql`` and ``mpesa_sync/_migrations``;
    an editable install or a checkout reads them from the project root.
    """
    for candidate in (_PACKAGE / f"_{name}", _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mpesa-sync is missing its {name}/ folder")


def migration_ids() -> list[str]:
    """The ids of the packaged migrations, oldest first (yoyo's ids: file names
    without the extension)."""
    folder = resource_dir("migrations")
    return sorted(p.stem for p in folder.glob("*.sql") if not p.stem.endswith(".rollback"))


# The migration that creates schema mpesa_sync.
FIRST_MIGRATION = "0001_mpesa_sync_base"
