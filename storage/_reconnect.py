"""A database server that goes away: waiting for it with bounded backoff, and giving up after a timeout.

A server restarts (an upgrade, a failover, `pg_ctl restart`) or stops for a while; every
connection it had is gone, and every statement fails until it is back. `Reconnect.call` runs one
database operation and, when it fails because the connection was lost, runs it again after 0.5 s,
1 s, 2 s, ... at most `MAX_DELAY_S` apart, until it succeeds or the outage has lasted `timeout_s`.
An outage is reported once, in one line, when it begins; it ends at the first operation that
succeeds, from any thread. Other errors are not retried.

Only an operation the caller can run twice belongs in `call`: one whose failed attempt wrote
nothing (a transaction the server never committed is rolled back) or whose second attempt finds
and accepts what the first wrote.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa

from ._disk import exception_chain
from ._url import display_url

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0
"""The longest wait between two attempts: a server that is back is found within this."""
DEFAULT_DB_TIMEOUT_S = 120.0
"""How long an outage may last before the process gives up (`rcutune worker --db-timeout`)."""

_LOST_CLASSES = ("OperationalError", "InterfaceError")


class DatabaseUnreachable(Exception):
    """The database server stayed unreachable for longer than the process may wait; the message is one line."""


def connection_lost(err: BaseException) -> bool:
    """Whether `err`, or an exception it was raised from or during, means the connection to the server is gone.

    A disconnect SQLAlchemy noticed (`connection_invalidated`), a connection that could not be made,
    and the driver's operational and interface errors (server shut down, restarting, connection
    refused or reset). Errors in the statement itself (integrity, syntax, data) are not.
    """
    for e in exception_chain(err):
        if isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (sa.exc.DisconnectionError, sa.exc.TimeoutError, ConnectionError)):
            return True
        if isinstance(e, sa.exc.IntegrityError):
            return False
        if isinstance(e, (sa.exc.OperationalError, sa.exc.InterfaceError)) and e.orig is not None:
            if type(e.orig).__module__.split(".")[0] != "sqlite3":  # SQLite's are locks and files, not servers
                return True
        elif any(c.__name__ in _LOST_CLASSES for c in type(e).__mro__) and type(e).__module__.startswith(
            ("psycopg", "pymysql", "MySQLdb")
        ):
            return True
    return False


def interrupted(err: BaseException) -> bool:
    """Whether `err` is an interrupt (Ctrl-C, or SIGTERM raised as one) that landed inside a database
    driver and came back as the driver's or a library's own error: psycopg's pool ping, interrupted,
    leaves the connection mid-transaction and SQLAlchemy, then Optuna, report that instead."""
    return any(isinstance(e, KeyboardInterrupt) for e in exception_chain(err))


def _reason(err: BaseException) -> str:
    """The driver's own words for a lost connection, in one short line."""
    e: BaseException | None = err
    while e is not None:
        orig = getattr(e, "orig", None)
        if orig is not None:
            e = orig
            break
        if e.__cause__ is None and e.__context__ is None:
            break
        e = e.__cause__ or e.__context__
    text = " ".join(str(e or err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


class Reconnect:
    """Bounded waits for one database server, shared by every thread of a process that uses it.

    Args:
        url: the database (named in messages, without its password).
        timeout_s: how long one outage may last before `call` raises `DatabaseUnreachable`.
        report: receives the one line that says an outage began.
        who: names the process in that line (e.g. "worker").
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = DEFAULT_DB_TIMEOUT_S,
        *,
        report: Callable[[str], None] | None = None,
        who: str = "rcutune",
    ) -> None:
        self.where = display_url(url)
        self.timeout_s = timeout_s
        self.report = report or (lambda line: None)
        self.who = who
        self.outages = 0
        """Outages begun so far (a caller compares it before and after something that must not span one)."""
        self._lock = threading.Lock()
        self._began: float | None = None  # monotonic start of the current outage
        self._last_lost: float = -float("inf")
        self._gave_up: str | None = None
        self._stopped = False
        self._local = threading.local()

    def call(self, operation: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run `operation`, again and again while the connection is lost, until it succeeds or the outage
        outlasts the timeout (then `DatabaseUnreachable`). Any other error propagates at once."""
        delay = FIRST_DELAY_S
        while True:
            self.raise_if_gave_up()
            try:
                result = operation(*args, **kwargs)
            except KeyboardInterrupt:
                self.stop_waiting()
                raise
            except Exception as err:
                if not connection_lost(err):
                    raise
                left = self.lost(err)
                if self._stopped or getattr(self._local, "no_wait", False):
                    raise DatabaseUnreachable(f"the database {self.where} is unreachable ({_reason(err)})") from None
                try:
                    time.sleep(min(delay, left) * random.uniform(0.8, 1.0))  # jitter: workers do not return in step
                except KeyboardInterrupt:
                    self.stop_waiting()
                    raise
                delay = min(2 * delay, MAX_DELAY_S)
                continue
            self.reached()
            return result

    def attempt(self, operation: Callable[..., T], *args: object, **kwargs: object) -> tuple[bool, T | None]:
        """Run `operation` once; a lost connection counts toward the outage and returns (False, None)."""
        try:
            result = operation(*args, **kwargs)
        except Exception as err:
            if not connection_lost(err):
                raise
            try:
                self.lost(err)
            except DatabaseUnreachable:
                pass  # the thread that waits says so; this one only did not get through
            return False, None
        self.reached()
        return True, result

    def stop_waiting(self) -> None:
        """From now on, in every thread, a lost connection raises `DatabaseUnreachable` at once (the
        process is stopping: Ctrl-C, SIGTERM)."""
        self._stopped = True

    @property
    def stopped(self) -> bool:
        return self._stopped

    @contextmanager
    def no_wait(self) -> Iterator[None]:
        """In this thread, a lost connection raises `DatabaseUnreachable` at once instead of waiting."""
        before = getattr(self._local, "no_wait", False)
        self._local.no_wait = True
        try:
            yield
        finally:
            self._local.no_wait = before

    def lost(self, err: BaseException) -> float:
        """Record a lost connection; returns the seconds the outage may still last.

        Raises:
            DatabaseUnreachable: the outage has lasted longer than the timeout.
        """
        now = time.monotonic()
        with self._lock:
            self._last_lost = now
            if self._began is None:
                self._began = now
                self.outages += 1
                began = True
            else:
                began = False
            left = self._began + self.timeout_s - now
            if left <= 0 and self._gave_up is None:
                self._gave_up = (
                    f"the database {self.where} stayed unreachable for {self.timeout_s:g} s "
                    f"(last error: {_reason(err)})"
                )
        if began:
            self.report(
                f"{self.who}: lost the database {self.where} ({_reason(err)}); reconnecting for up to "
                f"{self.timeout_s:g} s"
            )
        self.raise_if_gave_up()
        return left

    def reached(self) -> None:
        """An operation got through: the outage, if any, is over (also one given up on, as long as no
        caller has acted on that yet: the server is back)."""
        if self._began is not None or self._gave_up is not None:
            with self._lock:
                self._began = None
                self._gave_up = None

    def lost_within(self, seconds: float) -> bool:
        """Whether this process lost the connection in the last `seconds` seconds."""
        return time.monotonic() - self._last_lost < seconds

    def raise_if_gave_up(self) -> None:
        """Raise `DatabaseUnreachable` if an outage has outlasted the timeout (the process is giving up)."""
        if self._gave_up is not None:
            raise DatabaseUnreachable(self._gave_up)
