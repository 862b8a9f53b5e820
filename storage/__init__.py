"""Where studies are stored: database URLs, engines, rcutune's own tables and the campaign registry.

Optuna's RDBStorage tables live in the same database; rcutune's tables are prefixed `rcutune_`.
SQLite runs in WAL mode with a busy timeout; any other SQLAlchemy URL (PostgreSQL) works as it is.
This package does not import `tuner` (nor `sim`).
"""

from ._check import CONNECT_TIMEOUT_S, check_database
from ._disk import DiskFull, Unwritable, exception_chain, is_disk_full, is_unwritable
from ._engine import BUSY_TIMEOUT_S, create_engine, engine_kwargs
from ._reconnect import DEFAULT_DB_TIMEOUT_S, DatabaseUnreachable, Reconnect, connection_lost, interrupted
from ._registry import (
    OWNER_STALE_AFTER_S,
    CampaignBusy,
    Database,
    beat,
    claim_campaign,
    ensure_schema,
    find_campaign,
    free_campaign_name,
    list_campaigns,
    open_database,
    owner_alive,
    release_campaign,
    this_owner,
)
from ._schema import (
    SCHEMA_VERSION,
    AnswerRecord,
    Base,
    Campaign,
    RecommendationRecord,
    SchemaVersion,
    StudyRecord,
    SurrogateRecord,
)
from ._snapshot import Snapshot, snapshot
from ._url import (
    DEFAULT_URL,
    ENV_VAR,
    StorageError,
    database_exists,
    display_url,
    resolve_url,
    sqlite_path,
    storage_option,
)

__all__ = [
    "AnswerRecord",
    "BUSY_TIMEOUT_S",
    "Base",
    "CONNECT_TIMEOUT_S",
    "Campaign",
    "CampaignBusy",
    "DEFAULT_URL",
    "Database",
    "DEFAULT_DB_TIMEOUT_S",
    "DatabaseUnreachable",
    "Reconnect",
    "connection_lost",
    "exception_chain",
    "interrupted",
    "DiskFull",
    "ENV_VAR",
    "OWNER_STALE_AFTER_S",
    "RecommendationRecord",
    "SCHEMA_VERSION",
    "SchemaVersion",
    "StorageError",
    "StudyRecord",
    "SurrogateRecord",
    "beat",
    "check_database",
    "claim_campaign",
    "create_engine",
    "database_exists",
    "display_url",
    "engine_kwargs",
    "ensure_schema",
    "find_campaign",
    "free_campaign_name",
    "is_disk_full",
    "list_campaigns",
    "open_database",
    "owner_alive",
    "release_campaign",
    "resolve_url",
    "sqlite_path",
    "storage_option",
    "this_owner",
    "Unwritable",
    "is_unwritable",
    "Snapshot",
    "snapshot",
]
