"""Reduced-precision activation values (the `value_precision` setting, docs/schema.md "Size").

A bfloat16 run stores each activation rounded to bfloat16 (8 significant bits, round to nearest
even), kept in a float32 column whose low 16 bits are zero: the Parquet file drops those bytes
(byte-stream-split then zstd), every reader sees ordinary floats, and nothing else changes.
The values are rounded as the pass writes them, before anything is derived from them, so the
statistics, histograms and examples of the run agree with the values it stores.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

EXACT = "float32"


def round_values(values: np.ndarray, precision: str) -> np.ndarray:
    """float32 values rounded to `precision` (returned as float32)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if precision == EXACT:
        return values
    if precision != "bfloat16":
        raise ValueError(f"unknown value precision {precision!r}")
    bits = values.view(np.uint32).astype(np.uint64)
    # round half to even on the 16 bits dropped; finite values only (activations are)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def round_column(table: pa.Table, column: str, precision: str) -> pa.Table:
    """`table` with `column` (float32) rounded to `precision`; a value too small to survive
    the rounding (a subnormal float) leaves with its row, as an activation is non-zero."""
    if precision == EXACT or table.num_rows == 0:
        return table
    values = round_values(table.column(column).to_numpy(), precision)
    i = table.schema.get_field_index(column)
    rounded = table.set_column(i, column, pa.array(values, pa.float32()))
    return rounded if values.all() else rounded.filter(pa.array(values != 0))
