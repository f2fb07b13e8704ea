"""Which rule of the billing schema a database error broke, named without the row's values.

Shared by the writer (is a failed flush the record's fault?) and the migrations
(which stored rows block an upgrade?). Messages built from these never echo the
database's own text for a violation: PostgreSQL's DETAIL quotes the row's values.
"""

from __future__ import annotations

import re

from sqlalchemy.exc import DBAPIError

from connectors.sink_billing import tables

_SQLITE_CONSTRAINT = re.compile(r"(CHECK|UNIQUE|NOT NULL|FOREIGN KEY) constraint failed(: [\w.]+)?")
# PostgreSQL names a violated index in its diagnostics; SQLite only lists the index's columns.
_UNIQUE_INDEXES = {ix.name: ix for ix in tables.ledger.indexes if ix.unique and ix.name}
_SQLITE_UNIQUE = {
    "UNIQUE constraint failed: " + ", ".join(f"{tables.ledger.name}.{c.name}" for c in ix.columns): name
    for name, ix in _UNIQUE_INDEXES.items()
}


def dbapi_error(error: BaseException) -> BaseException:
    """The driver's exception under SQLAlchemy's wrapper (psycopg's carries diagnostics)."""
    return error.orig if isinstance(error, DBAPIError) and error.orig is not None else error


def is_dbapi_error(error: BaseException) -> bool:
    return any(c.__module__.startswith(("psycopg", "sqlite3")) for c in type(error).__mro__)


def is_constraint_violation(error: BaseException) -> bool:
    names = {c.__name__ for c in type(dbapi_error(error)).__mro__}
    return bool(names & {"IntegrityError", "DataError"})


def unique_index(error: BaseException) -> str | None:
    """The billing ledger's unique index that ``error`` violates, or None (another rule, or no violation)."""
    orig = dbapi_error(error)
    diag = getattr(orig, "diag", None)
    if diag is not None:
        name = getattr(diag, "constraint_name", None)
        return name if name in _UNIQUE_INDEXES else None
    if not is_constraint_violation(error):
        return None
    return _SQLITE_UNIQUE.get(str(orig).strip())


def error_class(error: BaseException) -> str:
    return type(dbapi_error(error)).__name__


def describe(error: BaseException) -> str:
    """The violated rule, e.g. ``constraint ck_billing_charges_accession_not_empty`` (no values)."""
    orig = dbapi_error(error)
    diag = getattr(orig, "diag", None)  # psycopg: names the constraint without echoing values
    if diag is not None and getattr(diag, "constraint_name", None):
        return f"constraint {diag.constraint_name}"
    if diag is not None and getattr(diag, "sqlstate", None):
        return f"a column rule (SQLSTATE {diag.sqlstate}, {type(orig).__name__})"
    name = _SQLITE_UNIQUE.get(str(orig).strip())
    if name is not None:
        return f"UNIQUE constraint {name}"
    match = _SQLITE_CONSTRAINT.search(str(orig))
    if match:
        return f"{match.group(1)} constraint{match.group(2) or ''}".replace(": ", " ")
    return f"a database constraint ({type(orig).__name__})"
