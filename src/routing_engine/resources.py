"""Where the files shipped beside the code live: streams/ (wire contracts), dashboards/, config/, data/.

Installed as a wheel they sit inside the package (`_streams`, `_dashboards`, `_config`); in a source checkout
they are the repository's own top-level folders.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    """streams/, dashboards/ or config/: the packaged copy when installed, the repo copy when editable."""
    for cand in (PACKAGE_DIR / f"_{name}", PACKAGE_DIR.parents[1] / name):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"{name}/ not found next to the package")


def streams_dir() -> Path:
    return asset_dir("streams")


def data_dir() -> Path:
    """Data that ships inside the package itself (team map, default training set)."""
    return PACKAGE_DIR / "data"
