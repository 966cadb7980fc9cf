"""Wire contracts: where the JSON Schemas and Lua scripts in streams/ live, and loading them."""

from __future__ import annotations

import functools
from pathlib import Path

import jsonschema
import orjson


def streams_dir() -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here / "_streams", here.parents[1] / "streams"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("streams/ contracts not found next to the package")


def asset_dir(name: str) -> Path:
    """dashboards/ or config/: packaged copy when installed as a wheel, repo copy when editable."""
    here = Path(__file__).resolve().parent
    for cand in (here / f"_{name}", here.parents[1] / name):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"{name}/ not found next to the package")


@functools.cache
def lua(name: str) -> str:
    return (streams_dir() / f"{name}.lua").read_text()


@functools.cache
def validator(schema: str) -> jsonschema.protocols.Validator:
    doc = orjson.loads((streams_dir() / f"{schema}.schema.json").read_bytes())
    cls = jsonschema.validators.validator_for(doc)
    return cls(doc, format_checker=cls.FORMAT_CHECKER)
