"""The JSON Schemas in streams/ (the wire truth), loaded once and compiled into validators."""

from __future__ import annotations

import functools

import jsonschema
import orjson

from ..resources import streams_dir


@functools.cache
def schema(name: str) -> dict:
    return orjson.loads((streams_dir() / f"{name}.schema.json").read_bytes())


@functools.cache
def validator(name: str) -> jsonschema.protocols.Validator:
    doc = schema(name)
    cls = jsonschema.validators.validator_for(doc)
    return cls(doc, format_checker=cls.FORMAT_CHECKER)
