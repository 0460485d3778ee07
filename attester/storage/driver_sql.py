"""SQLAlchemy's INSERT statements run through the database driver's own cursor.

A batch of registrations (group_commit.py) writes four or five statements while it holds
SQLite's write lock, which every worker's writes wait for. SQLAlchemy's Core spent more
Python around each statement (its execution context, its parameter handling, its result)
than the driver spent running it: a batch of three registrations on SQLite took 0.94 ms of
CPU for its statements through Core and 0.43 ms through the driver's cursor (one process,
median of 300, 2026-12-03).

What the driver gets here is what SQLAlchemy would have given it: the SQL is SQLAlchemy's,
compiled once for the dialect and the columns given, and each value is converted by its
column's type as SQLAlchemy converts it (the dialect's bind processors: a naive datetime
refused, a datetime written in SQLite's text form, bytes in the driver's binary wrapper).
Only INSERTs that give every value themselves: a column with a Python-side default, which
SQLAlchemy would fill in, is refused when the statement is compiled (TypeError). Errors are
the driver's own; the caller raises them as SQLAlchemy's (store.py, ``_Pipeline``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert
from sqlalchemy.engine import Dialect


@dataclass(frozen=True)
class DriverStatement:
    sql: str
    names: tuple[str, ...]  # the parameters, in the order a positional driver takes them
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool  # SQLite's qmark style; psycopg's pyformat takes a mapping

    def parameters(self, row: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        values = [
            row[name] if convert is None else convert(row[name])
            for name, convert in zip(self.names, self.processors)
        ]
        return tuple(values) if self.positional else dict(zip(self.names, values))


# by (id of the statement, its dialect's class, the columns given); the statement is kept
# in the value so that its id is not reused. (The conversions of this schema's types depend
# on the dialect's class alone; a type configured per engine, JSON's serializer say, would
# need the dialect itself in the key.)
_compiled: dict[tuple[int, type, tuple[str, ...]], tuple[Insert, DriverStatement]] = {}


def driver_statement(
    statement: Insert, dialect: Dialect, columns: Iterable[str]
) -> DriverStatement:
    """``statement`` with values for ``columns`` (each row gives all of them), compiled
    for ``dialect`` once."""
    names = tuple(columns)
    key = (id(statement), type(dialect), names)
    found = _compiled.get(key)
    if found is not None:
        return found[1]
    compiled = statement.compile(dialect=dialect, column_keys=list(names))
    if compiled.insert_prefetch:  # type: ignore[attr-defined]
        raise TypeError(f"{statement.table}: a value SQLAlchemy would fill in is not given")
    order = tuple(compiled.positiontup) if compiled.positional else names  # type: ignore[arg-type]
    if sorted(order) != sorted(names):
        raise TypeError(f"{statement.table}: the compiled parameters are not the columns given")
    table = statement.table
    processors = tuple(
        table.c[name].type.dialect_impl(dialect).bind_processor(dialect)  # type: ignore[union-attr]
        for name in order
    )
    prepared = DriverStatement(str(compiled), order, processors, compiled.positional)
    _compiled[key] = (statement, prepared)
    return prepared


def execute_many(driver: Any, statement: DriverStatement, rows: list[Mapping[str, Any]]) -> None:
    """Run ``statement`` once per row on a cursor of the driver's connection ``driver``."""
    with contextlib.closing(driver.cursor()) as cursor:
        cursor.executemany(statement.sql, [statement.parameters(row) for row in rows])


def returned_rows(
    driver: Any, statement: DriverStatement, rows: list[Mapping[str, Any]]
) -> list[Any]:
    """Run ``statement`` (an INSERT ... RETURNING) once per row; the rows it returned. The
    drivers that come here are SQLite's (positional) and psycopg (in its pipeline, the
    rows go out together and are answered in one round trip)."""
    parameters = [statement.parameters(row) for row in rows]
    returned: list[Any] = []
    with contextlib.closing(driver.cursor()) as cursor:
        if statement.positional:  # SQLite's executemany returns no rows: one at a time
            for one in parameters:
                returned.extend(cursor.execute(statement.sql, one).fetchall())
            return returned
        cursor.executemany(statement.sql, parameters, returning=True)  # psycopg
        while True:
            returned.extend(cursor.fetchall())
            if not cursor.nextset():
                return returned
