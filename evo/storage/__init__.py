"""What a search remembers: the results database (`store.Storage`), its tables
(`models`) and their migrations (`migrations/`). The rest of evo imports from here."""

from evo.storage.leases import DriverRecord, LeaseLost
from evo.storage.models import RUN_STATUSES, SCHEMA_VERSION, TRIAL_STATUSES, RunStatus
from evo.storage.store import (
    DEFAULT_URL,
    ForecastRecord,
    GenerationRecord,
    PredictionRecord,
    PromotionRecord,
    RunInfo,
    SessionRecord,
    Spent,
    Storage,
    TrialRecord,
    TrialSummary,
    ValidationRecord,
    budget_key,
    genome_hash,
)

__all__ = [
    "DEFAULT_URL",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "TRIAL_STATUSES",
    "DriverRecord",
    "ForecastRecord",
    "GenerationRecord",
    "LeaseLost",
    "PredictionRecord",
    "PromotionRecord",
    "RunInfo",
    "RunStatus",
    "SessionRecord",
    "Spent",
    "Storage",
    "TrialRecord",
    "TrialSummary",
    "ValidationRecord",
    "budget_key",
    "genome_hash",
]
