"""Read input tables (Parquet, CSV, RecBole atomic files) into Arrow, ids as strings.

Every row keeps the file it came from and its 1-based data row number (the header is not
counted) in bookkeeping columns, so validation can name them in errors and rejects.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from chatrec.config import TableInput
from chatrec.errors import InputDataError
from chatrec.schemas import ROW_COL, SOURCE_COL
from chatrec.sources import detect_format, resolve_files

# RecBole atomic headers are `name:type`; token_seq / float_seq fields are space-separated.
_RECBOLE_TYPES = {"token", "token_seq", "float", "float_seq"}


def read_table(table: TableInput, *, id_columns: tuple[str, ...] = ()) -> pa.Table:
    """Read every file the location(s) in `table.path` name into one table with bookkeeping columns.

    `id_columns` (after renaming) are cast to strings whatever their type in the file;
    ids of a type that cannot be read losslessly as a string are an InputDataError.
    """
    parts = []
    for location in table.locations:
        resolved = resolve_files(location)
        for path, display in zip(resolved.paths, resolved.display):
            parts.append(_read_file(resolved.filesystem, path, display, table, id_columns))
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InputDataError(
            f"the files under this location have incompatible schemas: {e}", source=table.display
        ) from e


def _read_file(fs, path: str, display: str, table: TableInput, id_columns) -> pa.Table:
    fmt = detect_format(path, table.format)
    raw = _read_one(fs, path, display, fmt, id_columns, table.rename)
    raw = _apply_rename(raw, table.rename, display)
    raw = _ids_as_strings(raw, id_columns, display)
    n = raw.num_rows
    raw = raw.append_column(SOURCE_COL, pa.array([display] * n, pa.string()))
    return raw.append_column(ROW_COL, pa.array(range(1, n + 1), pa.int64()))


def _read_one(fs, path: str, display: str, fmt: str, id_columns, rename) -> pa.Table:
    try:
        if fmt == "parquet":
            return pq.read_table(path, filesystem=fs)
        if fmt == "csv":
            with fs.open_input_stream(path) as stream:
                return _read_csv(stream, path, id_columns, rename)
        if fmt == "recbole":
            return _read_recbole(fs, path, display)
    except InputDataError:
        raise
    except (pa.ArrowInvalid, OSError) as e:
        raise InputDataError(f"cannot read as {fmt}: {e}", source=display) from e
    raise InputDataError(f"unknown format {fmt!r}", source=display)


def _read_csv(stream, path: str, id_columns, rename) -> pa.Table:
    # Ids must stay strings: reading "007" as the integer 7 would change the id.
    source_names = {v: k for k, v in rename.items()}
    string_cols = {source_names.get(c, c): pa.string() for c in id_columns}
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    return pacsv.read_csv(
        stream,
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(column_types=string_cols, strings_can_be_null=True),
    )


def _read_recbole(fs, path: str, display: str) -> pa.Table:
    """A RecBole atomic file: tab-separated, no quoting, header fields `name:type`."""
    with fs.open_input_stream(path) as stream:
        header = stream.read(1 << 16).split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
    with fs.open_input_stream(path) as stream:
        table = pacsv.read_csv(
            stream,
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            # Everything as text first (zip codes keep their leading zeros); the declared
            # type converts below.
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header.split("\t")},
                strings_can_be_null=True,
            ),
        )
    columns, names = [], []
    for header in table.column_names:
        name, _, kind = header.partition(":")
        if kind not in _RECBOLE_TYPES:
            raise InputDataError(
                f"RecBole header field must be name:type with type in {sorted(_RECBOLE_TYPES)}",
                source=display,
                column=header,
            )
        col = table.column(header)
        if kind == "token_seq":
            col = pc.split_pattern(col, " ")
        elif kind == "float_seq":
            col = pc.cast(pc.split_pattern(col, " "), pa.list_(pa.float64()))
        elif kind == "float":
            col = pc.cast(col, pa.float64()) if _all_numeric(col) else col
        columns.append(col)
        names.append(name)
    return pa.table(columns, names=names)


def _all_numeric(col: pa.ChunkedArray) -> bool:
    # A float column with unparsable cells stays text, so validation can reject those rows.
    text = pc.utf8_trim_whitespace(col)
    ok = pc.match_substring_regex(text, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
    return bool(pc.all(pc.or_kleene(ok, pc.is_null(col))).as_py())


def _apply_rename(table: pa.Table, rename: dict[str, str], display: str) -> pa.Table:
    if not rename:
        return table
    missing = [src for src in rename if src not in table.column_names]
    if missing:
        raise InputDataError(
            f"columns named in `rename` are not in the file (it has {table.column_names})",
            source=display,
            column=missing[0],
        )
    return table.rename_columns([rename.get(c, c) for c in table.column_names])


def _ids_as_strings(table: pa.Table, id_columns, display: str) -> pa.Table:
    for name in id_columns:
        if name not in table.column_names:
            continue  # validation reports missing columns with the full column list
        col = table.column(name)
        t = col.type
        if pa.types.is_dictionary(t):
            col, t = col.cast(t.value_type), t.value_type
        if pa.types.is_string(t):
            continue
        if pa.types.is_large_string(t) or pa.types.is_integer(t):
            table = table.set_column(table.schema.get_field_index(name), name, pc.cast(col, pa.string()))
            continue
        example = next((i for i, v in enumerate(col.to_pylist()) if v is not None), 0)
        raise InputDataError(
            f"ids must be strings or integers, found {t} (e.g. {col[example].as_py()!r}); "
            "floats and nested types do not name an id unambiguously",
            source=display,
            column=name,
            row=example + 1,
        )
    return table
