"""Read input tables (Parquet, CSV, RecBole atomic files) into Arrow, ids as strings.

Every row keeps the file it came from and its 1-based data row number (the header is not
counted) in bookkeeping columns, so validation can name them in errors and rejects.
"""

from __future__ import annotations

import csv

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
    return read_chunk(fs, path, display, table, id_columns=id_columns)


def read_chunk(fs, path: str, display: str, table: TableInput, *, id_columns: tuple[str, ...] = (),
               row_groups: list[int] | None = None, first_row: int = 0) -> pa.Table:
    """One file of `table`, or with `row_groups` those row groups of a Parquet file, whose
    first row is the file's data row `first_row` + 1: bookkeeping rows stay the file's."""
    if row_groups is not None:
        try:
            raw = pq.ParquetFile(path, filesystem=fs).read_row_groups(row_groups)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputDataError(f"cannot read as parquet: {e}", source=display) from e
    else:
        raw = _read_one(fs, path, display, detect_format(path, table.format), id_columns, table.rename)
    try:
        raw = _apply_rename(raw, table.rename, display)
        raw = _ids_as_strings(raw, id_columns, display)
    except InputDataError as e:
        if first_row and e.row is not None:
            raise e.shifted(first_row) from e
        raise
    for reserved in (SOURCE_COL, ROW_COL):
        if reserved in raw.column_names:
            raise InputDataError(f"the column name {reserved!r} is reserved for chatrec's own bookkeeping; "
                                 "rename or drop that column", source=display, column=reserved)
    n = raw.num_rows
    raw = raw.append_column(SOURCE_COL, pa.array([display] * n, pa.string()))
    return raw.append_column(ROW_COL, pa.array(range(first_row + 1, first_row + n + 1), pa.int64()))


def header_columns(fs, path: str, display: str, table: TableInput) -> list[str]:
    """A file's column names (renamed) from its footer or header line, without reading its rows."""
    fmt = detect_format(path, table.format)
    try:
        if fmt == "parquet":
            names = pq.read_schema(path, filesystem=fs).names
        else:
            with fs.open_input_stream(path) as stream:
                first_line = stream.read(1 << 16).split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
            names = next(csv.reader([first_line], delimiter=_csv_parse_options(path, fmt).delimiter))
            if fmt == "recbole":
                names = [n.split(":", 1)[0] for n in names]
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, StopIteration) as e:
        raise InputDataError(f"cannot read the header as {fmt}: {e}", source=display) from e
    return [table.rename.get(n, n) for n in names]


def _read_one(fs, path: str, display: str, fmt: str, id_columns, rename) -> pa.Table:
    try:
        if fmt == "parquet":
            return pq.read_table(path, filesystem=fs)
        if fmt == "csv":
            with fs.open_input_stream(path) as stream:
                table = _read_csv(stream, path, id_columns, rename)
            if table.num_columns == 1:  # a blank line of a one-column file is a row with an empty value
                with fs.open_input_stream(path) as stream:
                    table = _read_csv(stream, path, id_columns, rename, blank_lines_are_rows=True)
            try:
                table.column_names  # noqa: B018 - Arrow decodes the header's names only here
            except UnicodeDecodeError:
                _raise_invalid_utf8(fs, path, display, _csv_parse_options(path), rename)
            if any(pa.types.is_binary(t) for t in table.schema.types):  # CSV infers binary only for bad UTF-8
                _raise_invalid_utf8(fs, path, display, _csv_parse_options(path), rename)
            return table
        if fmt == "recbole":
            return _read_recbole(fs, path, display)
    except InputDataError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:  # Arrow decodes a CSV header with Python's codec
        if fmt in ("csv", "recbole") and "utf8" in str(e).lower().replace("-", ""):
            _raise_invalid_utf8(fs, path, display, _csv_parse_options(path, fmt), rename)
        raise InputDataError(f"cannot read as {fmt}: {e}", source=display) from e
    raise InputDataError(f"unknown format {fmt!r}", source=display)


def _read_csv(stream, path: str, id_columns, rename, *, blank_lines_are_rows: bool = False) -> pa.Table:
    # Ids must stay strings: reading "007" as the integer 7 would change the id.
    source_names = {v: k for k, v in rename.items()}
    string_cols = {source_names.get(c, c): pa.string() for c in id_columns}
    parse = _csv_parse_options(path)
    if blank_lines_are_rows:
        parse = pacsv.ParseOptions(delimiter=parse.delimiter, ignore_empty_lines=False)
    return pacsv.read_csv(
        stream,
        parse_options=parse,
        convert_options=pacsv.ConvertOptions(column_types=string_cols, strings_can_be_null=True),
    )


def _csv_parse_options(path: str, fmt: str = "csv") -> pacsv.ParseOptions:
    if fmt == "recbole":  # tab-separated, no quoting
        return pacsv.ParseOptions(delimiter="\t", quote_char=False)
    return pacsv.ParseOptions(delimiter="\t" if path.lower().endswith(".tsv") else ",")


def _raise_invalid_utf8(fs, path: str, display: str, parse: pacsv.ParseOptions, rename: dict[str, str]) -> None:
    """Name the first row (and column) whose bytes are not UTF-8: Arrow's reader says only
    that a column came out as binary, or that "invalid UTF8" was found somewhere."""
    with fs.open_input_stream(path) as stream:
        lines = stream.read(1 << 20).split(b"\n")
    # The header is the first line that is not blank (Arrow's reader skips blank lines).
    at = next((i for i, line in enumerate(lines) if line.strip(b"\r")), 0)
    header = lines[at].rstrip(b"\r") if lines else b""
    try:
        names = next(csv.reader([header.decode("utf-8")], delimiter=parse.delimiter,
                                quoting=csv.QUOTE_NONE if parse.quote_char is False else csv.QUOTE_MINIMAL), [])
    except UnicodeDecodeError as e:
        raise InputDataError(f"the header is not valid UTF-8 ({_bad_bytes(header, e)}); save the file as UTF-8",
                             source=display) from None
    try:
        with fs.open_input_stream(path) as stream:
            table = pacsv.read_csv(stream, parse_options=parse, read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=at + 1), convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.binary() for n in names}))
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:  # unreadable as CSV beyond its encoding
        raise InputDataError(f"invalid UTF-8, and cannot read as CSV: {e}", source=display) from e
    first: tuple[int, str, str] | None = None
    for name in table.column_names:
        for row, value in enumerate(table.column(name).to_pylist(), start=1):
            if first is not None and row >= first[0]:
                break
            try:
                if value is not None:
                    value.decode("utf-8")
            except UnicodeDecodeError as e:
                recbole = parse.quote_char is False  # its header fields are name:type
                first = (row, name.partition(":")[0] if recbole else name, _bad_bytes(value, e))
                break
    if first is None:  # Arrow saw something this scan did not: keep its word for it
        raise InputDataError("invalid UTF-8; save the file as UTF-8", source=display)
    row, name, detail = first
    raise InputDataError(f"invalid UTF-8 ({detail}); save the file as UTF-8", source=display,
                         column=rename.get(name, name), row=row)


def _bad_bytes(value: bytes, e: UnicodeDecodeError) -> str:
    return f"bytes {value[e.start:e.end + 3]!r} at byte {e.start} of {value[:60]!r}"


def _read_recbole(fs, path: str, display: str) -> pa.Table:
    """A RecBole atomic file: tab-separated, no quoting, header fields `name:type`."""
    with fs.open_input_stream(path) as stream:
        first_line = stream.read(1 << 16).split(b"\n", 1)[0]
    try:
        header = first_line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        raise InputDataError(f"the header is not valid UTF-8 ({_bad_bytes(first_line, e)}); save the file as UTF-8",
                             source=display) from None
    with fs.open_input_stream(path) as stream:
        table = pacsv.read_csv(
            stream,
            parse_options=_csv_parse_options(path, "recbole"),
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
        # An all-null column (Arrow's null type) is cast too: its rows are rejected as null ids.
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) or pa.types.is_null(t):
            if col.type != table.schema.field(name).type or not pa.types.is_string(t):
                table = table.set_column(table.schema.get_field_index(name), name, pc.cast(col, pa.string()))
            continue
        example = next((i for i, v in enumerate(col.to_pylist()) if v is not None), None)
        raise InputDataError(
            f"ids must be strings or integers, found {t}"
            f"{f' (e.g. {col[example].as_py()!r})' if example is not None else ''}; "
            "floats and nested types do not name an id unambiguously",
            source=display,
            column=name,
            row=example + 1 if example is not None else None,
        )
    return table
