"""Parquet manifests: one row per item, explicit schemas, content hashes.

Every stage writes its manifest with the schema declared here (pandas 3 would
otherwise guess types from the data), atomically, with a few facts about the
whole table in the schema's metadata (which backend, which encoder...).
Readers check the schema so a manifest from an older layout fails loudly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synctalk.atomic import atomic_path
from synctalk.face.landmarks import ANCHOR_NAMES

FRAMES_SCHEMA = pa.schema(
    [
        pa.field("frame", pa.int32(), nullable=False),  # index in the 25 fps mezzanine
        pa.field("timestamp", pa.float64(), nullable=False),  # seconds
        pa.field("source_frame", pa.int32(), nullable=False),  # nearest frame of the source video
        pa.field("hash", pa.string(), nullable=False),  # blake2b-64 of the decoded BGR pixels
    ]
)

LANDMARKS_SCHEMA = pa.schema(
    [
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("detected", pa.bool_(), nullable=False),  # False: interpolated over a short gap
        pa.field("score", pa.float32(), nullable=False),
        pa.field("box", pa.list_(pa.float32(), 4), nullable=False),  # face x0, y0, x1, y1
        pa.field("crop_box", pa.list_(pa.int32(), 3), nullable=False),  # smoothed x0, y0, side
        pa.field("anchors", pa.list_(pa.float32(), 2 * len(ANCHOR_NAMES)), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32()), nullable=False),  # x0, y0, x1, y1, ...
    ]
)

FEATURES_SCHEMA = pa.schema(
    [
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("hash", pa.string(), nullable=False),  # blake2b-64 of the float32 feature
    ]
)


class ManifestError(ValueError):
    pass


def content_hash(data: bytes | np.ndarray) -> str:
    """Short content hash (blake2b, 8 bytes, hex) of bytes or an array's buffer."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def write_manifest(
    path: str | Path, columns: dict[str, Any], schema: pa.Schema, meta: dict[str, Any] | None = None
) -> Path:
    """Write `columns` as a Parquet table with `schema`, atomically."""
    path = Path(path)
    arrays = [pa.array(_column(columns[f.name]), type=f.type) for f in schema]
    meta_bytes = {b"synctalk": json.dumps(meta or {}, sort_keys=True).encode()}
    table = pa.Table.from_arrays(arrays, schema=schema.with_metadata(meta_bytes))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _column(values: Any) -> Any:
    if isinstance(values, np.ndarray) and values.ndim > 1:
        return list(values.reshape(len(values), -1))
    return values


def read_manifest(path: str | Path, schema: pa.Schema) -> tuple[pa.Table, dict[str, Any]]:
    """The table at `path` and its metadata; ManifestError if the columns differ."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    table = pq.read_table(path)
    if not table.schema.remove_metadata().equals(schema.remove_metadata()):
        raise ManifestError(f"{path}: columns {table.schema.names} do not match {schema.names}")
    raw = (table.schema.metadata or {}).get(b"synctalk", b"{}")
    return table, json.loads(raw)


def fixed_list_to_numpy(column: pa.ChunkedArray, width: int, dtype=np.float32) -> np.ndarray:
    """A fixed-size list column as a [N, width] array."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(dtype).reshape(-1, width)
