"""User buckets: a stable hash of `user_id` that partitions the per-user data of a run.

The histories are built one shuffle partition of buckets at a time on the cluster, and the
published `recommendations/` are written as Hive partitions `bucket=<b>/`, so a serving
loader reads one user's rows from one directory:

    b = bucket_of(user_id, manifest["partitioning"]["recommendations"]["buckets"])

The hash is 64-bit FNV-1a over the id's UTF-8 bytes, modulo the bucket count: simple enough
to reimplement in any language a serving stack is written in, and fixed for good (changing
it would move every user of every published run).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

BUCKET_COLUMN = "bucket"
HASH = "fnv1a64(utf8(user_id)) mod buckets"
ROWS_PER_BUCKET = 1 << 17  # interactions per bucket the bucket count aims at
MAX_BUCKETS = 4096  # a bound on the shuffle's partitions and on the output's directories

_OFFSET = np.uint64(0xCBF29CE484222325)
_PRIME = np.uint64(0x100000001B3)
# Ids longer than this are hashed one by one: the vectorised loop runs once per byte position.
_VECTOR_BYTES = 64


def bucket_count(interactions: int) -> int:
    """Buckets for a log of `interactions` rows: a power of two near ROWS_PER_BUCKET rows
    each, 1 for a small log, at most MAX_BUCKETS."""
    wanted = max(1, -(-interactions // ROWS_PER_BUCKET))
    return min(MAX_BUCKETS, 1 << (wanted - 1).bit_length())


def bucket_of(user_id: str, buckets: int) -> int:
    """One user's bucket (what a serving loader computes)."""
    h = 0xCBF29CE484222325
    for byte in user_id.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % buckets


def user_buckets(user_ids: pa.Array | pa.ChunkedArray, buckets: int) -> pa.Array:
    """(n,) string user ids -> (n,) int32 buckets, equal to `bucket_of` for each id."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    user_ids = user_ids.cast(pa.large_string())  # int64 offsets: no overflow on big blocks
    n = len(user_ids)
    if buckets == 1 or n == 0:
        return pa.array(np.zeros(n, np.int32), pa.int32())
    if user_ids.null_count:
        raise ValueError("user ids must not be null")  # validation rejects them first
    offsets = np.frombuffer(user_ids.buffers()[1], np.int64)[user_ids.offset:user_ids.offset + n + 1]
    data = np.frombuffer(user_ids.buffers()[2], np.uint8) if user_ids.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)  # (n,)
    h = np.full(n, _OFFSET, np.uint64)
    short = lengths <= _VECTOR_BYTES
    with np.errstate(over="ignore"):
        for position in range(int(lengths[short].max(initial=0))):
            at = np.flatnonzero(short & (lengths > position))
            h[at] = (h[at] ^ data[offsets[at] + position].astype(np.uint64)) * _PRIME
    out = (h % np.uint64(buckets)).astype(np.int32)
    for i in np.flatnonzero(~short):
        out[i] = bucket_of(user_ids[int(i)].as_py(), buckets)
    return pa.array(out, pa.int32())


def with_buckets(table: pa.Table, buckets: int) -> pa.Table:
    """`table` with its BUCKET_COLUMN from its user_id column."""
    return table.append_column(BUCKET_COLUMN, user_buckets(table.column("user_id"), buckets))


def partitioning(buckets: int) -> dict:
    """How a table partitioned by user bucket is laid out: the manifest's record of it."""
    return {"style": "hive", "column": BUCKET_COLUMN, "buckets": buckets, "hash": HASH,
            "function": "chatrec.user_buckets.bucket_of"}
