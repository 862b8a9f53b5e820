"""Optuna's RDB storage for workers whose database server may restart under them.

Every storage operation a worker's study runs (reads, attributes, parameters, new trials, the
tell) waits through an outage (`storage.Reconnect`) instead of failing. Running one twice is
harmless: reads and attribute or parameter writes find the same state again; a tell whose first
attempt did commit finds its own result; a trial created twice is a redundant copy that workers
recognise and never run (`_worker`). Two operations are different:

- the heartbeat is tried once per interval (Optuna's heartbeat thread must not stall the trial's
  end), and an outage only delays it;
- no trial is declared stale by a worker within a grace period after it lost the connection
  itself, nor (PostgreSQL) within a grace period after the server started: every worker's
  heartbeats failed while the server was away, so their ages say nothing yet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from rcutune import storage

_WAIT_THROUGH_OUTAGES = (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_trial_param",
    "_get_trials",
    "_get_best_trial_id",
    "set_study_user_attr",
    "set_study_system_attr",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "_set_trial_param",
    "set_trial_intermediate_value",
    "_create_new_trial",
)
"""RDBStorage's methods that run statements (the public ones delegate to the private ones named here)."""


class ReconnectingStorage(RDBStorage):
    """`RDBStorage` whose operations wait for a server that went away (see the module's docstring).

    Build it with `open_reconnecting` (the constructor itself queries the server).
    """

    reconnect: storage.Reconnect

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        attempts = [0]

        def tell() -> bool:
            attempts[0] += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if attempts[0] > 1:  # the attempt that lost its connection may have committed before it did
                    stored = RDBStorage.get_trial(self, trial_id)
                    if stored.state == state and (values is None or stored.values == [float(v) for v in values]):
                        return True
                raise

        return self.reconnect.call(tell)

    def record_heartbeat(self, trial_id: int) -> None:
        self.reconnect.attempt(RDBStorage.record_heartbeat, self, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period if self.grace_period is not None else 2 * (self.heartbeat_interval or 0)
        if self.reconnect.lost_within(grace) or self.reconnect.call(self.server_up_for) < grace:
            return []
        return self.reconnect.call(RDBStorage._get_stale_trial_ids, self, study_id)

    def server_up_for(self) -> float:
        """Seconds since the database server started (a worker started after it came back saw no outage)."""
        if self.engine.dialect.name != "postgresql":
            return float("inf")
        with self.engine.connect() as conn:
            up = conn.execute(sa.text("SELECT extract(epoch FROM now() - pg_postmaster_start_time())")).scalar()
        return float(up)


def _waiting(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def through_outages(self: ReconnectingStorage, *args: Any, **kwargs: Any) -> Any:
        return self.reconnect.call(method, self, *args, **kwargs)

    return through_outages


for _name in _WAIT_THROUGH_OUTAGES:
    setattr(ReconnectingStorage, _name, _waiting(_name))


def open_reconnecting(url: str, reconnect: storage.Reconnect, **kwargs: Any) -> ReconnectingStorage:
    """A `ReconnectingStorage` for `url`, waiting for the server if it is away right now."""

    def build() -> ReconnectingStorage:
        rdb = ReconnectingStorage.__new__(ReconnectingStorage)
        rdb.reconnect = reconnect
        try:
            RDBStorage.__init__(rdb, url, **kwargs)
        except BaseException:
            if hasattr(rdb, "engine"):
                rdb.engine.dispose()
            raise
        return rdb

    return reconnect.call(build)
