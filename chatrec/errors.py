"""Exception types. Library code raises these; only the CLI turns them into exit codes.

Bad configuration, bad input data and internal failures are different things for the
person running the job, so they are different types with different exit codes.
"""

from __future__ import annotations


class ChatrecError(Exception):
    """Base class for every error chatrec raises on purpose."""

    exit_code = 1


class ConfigError(ChatrecError):
    """The configuration (YAML file or flags) is invalid."""

    exit_code = 2


class InputDataError(ChatrecError):
    """An input table breaks the contract in a way that stops the run.

    Row-level problems go to the rejects table instead; this is for problems with the
    table as a whole (missing column, wrong type, duplicate ids, unreadable file).
    The message names the file, the column and an example row.
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        where = []
        if source is not None:
            where.append(f"file {source}")
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}")
        full = f"{', '.join(where)}: {message}" if where else message
        super().__init__(full)
        self.message = message
        self.source = source
        self.column = column
        self.row = row

    def shifted(self, rows: int) -> "InputDataError":
        """The same error, its row `rows` further into the file (a chunk read from the middle)."""
        return InputDataError(self.message, source=self.source, column=self.column,
                              row=self.row + rows if self.row is not None else None)

    def __reduce__(self):  # across processes (a Ray task's error) with its parts
        return (_input_data_error, (self.message, self.source, self.column, self.row))


class PublishError(ChatrecError):
    """The output location cannot take this run (already published, not writable)."""

    exit_code = 4


class ClusterError(ChatrecError):
    """Ray could not be started, or the cluster named could not be joined."""

    exit_code = 7


class ModelLoadError(ChatrecError):
    """The encoder model could not be resolved or loaded."""

    exit_code = 5


def _input_data_error(message, source, column, row) -> InputDataError:
    return InputDataError(message, source=source, column=column, row=row)
