"""Versioned model folders: written whole in one rename, found by their creation time, named by kind and time."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path


def new_version(kind: str) -> str:
    """`<kind>-<UTC time>-<random>`: sorts by time, never collides between two trainers."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{kind}-{stamp}-{secrets.token_hex(3)}"


def created_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def publish_dir(final: Path):
    """Yield a hidden temp folder beside `final`; when the block succeeds it replaces `final` in one rename
    (so no reader sees half an artifact); when it fails the temp folder is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{secrets.token_hex(3)}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def newest_artifact(root: str | Path, required: str) -> Path | None:
    """Newest complete version folder under root (by meta.json's created_at): hidden temp folders and
    half-written ones (no meta.json or no `required` file) are never picked."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = []
    for d in root.iterdir():
        if d.name.startswith(".") or not (d / "meta.json").is_file() or not (d / required).is_file():
            continue
        try:
            created = json.loads((d / "meta.json").read_text()).get("created_at", "")
        except (OSError, ValueError):
            continue
        found.append((str(created), d.name, d))
    return max(found)[2] if found else None
