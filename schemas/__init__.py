"""The shard formats, defined once: a JSON Schema per sample kind (`NAME.schema.json`) and an Arrow
schema per Parquet index (`NAME.arrow.json`). These two loaders are the only way code reads them."""
from __future__ import annotations

import json
from importlib import resources
from typing import Any


def load_json_schema(name: str) -> dict[str, Any]:
    """A JSON Schema, e.g. 'm3w_document'."""
    return json.loads(resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8"))


def load_arrow_schema(name: str):  # -> pyarrow.Schema (pyarrow is imported only here, when asked)
    """An Arrow schema from `NAME.arrow.json` (field name, type, nullable)."""
    import pyarrow as pa

    spec = json.loads(resources.files(__name__).joinpath(f"{name}.arrow.json").read_text("utf-8"))
    types = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
             "float64": pa.float64(), "bool": pa.bool_(), "list<string>": pa.list_(pa.string())}
    return pa.schema([pa.field(f["name"], types[f["type"]], nullable=f["nullable"]) for f in spec["fields"]],
                     metadata={"schema": spec["name"]})
