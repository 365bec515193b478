"""The tuning trials in SQL: every trial of every search, for warm-starting the next ones.

The table ``tuning_trials`` lives in the allocator's history database (the same URL and
settings as :class:`~infra.allocator.history.HistoryStore`: SQLite under ``.mlops/`` by
default, PostgreSQL by ``MLOPS_ALLOCATOR_HISTORY_URL``). One row per trial: the use case, the
dataset version and its meta-features (as the allocator has them), the model family, the
parameters (JSON), the validation loss, the status, the wall time and the cores.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from prefect_mlops.mlops.dataset import MetaFeatures
from prefect_mlops.mlops.settings import Settings
from prefect_mlops.mlops.sql import create_tables, open_engine
from prefect_mlops.mlops.tuning.warm_start import PastTrial

_META = tuple(MetaFeatures.model_fields)
_TRIAL = tuple(name for name in PastTrial.model_fields if name != "meta")
COLUMNS: tuple[str, ...] = _TRIAL + _META
"""The table's columns: the trial's fields, then the dataset's meta-features."""

_SQL_TYPES: dict[Any, Any] = {
    bool: sa.Boolean,
    int: sa.BigInteger,
    float: sa.Float,
    datetime: sa.DateTime(timezone=True),
}


def _sql_type(name: str, annotation: Any) -> Any:
    if name == "params" or typing.get_origin(annotation) is dict:
        return sa.JSON
    if name == "error":
        return sa.Text
    for python_type, sql_type in _SQL_TYPES.items():
        if annotation is python_type or python_type in typing.get_args(annotation):
            return sql_type
    return sa.String(128)


metadata = sa.MetaData()
trials_table = sa.Table(
    "tuning_trials",
    metadata,
    *(sa.Column(name, _sql_type(name, PastTrial.model_fields[name].annotation)) for name in _TRIAL),
    *(
        sa.Column(name, _sql_type(name, MetaFeatures.model_fields[name].annotation))
        for name in _META
    ),
    sa.PrimaryKeyConstraint("trial_id"),
    sa.Index("tuning_trials_family_task", "family", "task"),
)


def _row(trial: PastTrial) -> dict[str, Any]:
    return trial.model_dump(exclude={"meta"}) | trial.meta.model_dump()


def _trial(row: dict[str, Any]) -> PastTrial:
    meta = {name: row[name] for name in _META if row.get(name) is not None}
    fields = {name: row[name] for name in _TRIAL if row.get(name) is not None}
    return PastTrial(**fields, meta=MetaFeatures(**meta))


class TrialStore:
    """The tuning trials in any SQLAlchemy database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = open_engine(url)
        create_tables(metadata, self.engine)

    def add_all(self, trials: Iterable[PastTrial]) -> int:
        """Add trials in one transaction (all or none); returns how many."""
        rows = [_row(trial) for trial in trials]
        if rows:
            with self.engine.begin() as connection:
                connection.execute(trials_table.insert(), rows)
        return len(rows)

    def record(self, trial: PastTrial) -> None:
        """Add one trial."""
        self.add_all([trial])

    def trials(self, family: str | None = None, task: str | None = None) -> list[PastTrial]:
        """The stored trials (of one family and task, if given), oldest first."""
        query = sa.select(trials_table).order_by(trials_table.c.recorded_at, trials_table.c.number)
        if family is not None:
            query = query.where(trials_table.c.family == family)
        if task is not None:
            query = query.where(trials_table.c.task == task)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [_trial(dict(row)) for row in rows]

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


def open_trial_store(settings: Settings) -> TrialStore:
    """The trial store in the allocator's history database named by settings."""
    return TrialStore(settings.resolved_history_url)
