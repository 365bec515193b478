"""Moving the ``champion`` alias: compare-and-set under a lock, so two promotions cannot both win.

The model gate decides against the champion it read at the start; the deploy stage promotes.
Before writing, the promotion takes a lock shared by every process (see :mod:`infra.locks`),
reads the champion again, and only writes if it is still the one the gate compared against.
The loser of a race gets a :class:`~mlops.errors.PromotionConflict` naming the version that
won. A rollback is compare-and-set too: it puts back the aliases a promotion replaced, only if
the promoted version still holds ``champion``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from prefect_mlops.mlops.errors import PromotionConflict
from prefect_mlops.model_registry.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    alias_version,
    set_alias,
    version_by_alias,
)

logger = logging.getLogger(__name__)


class ChampionRef(BaseModel):
    """The champion a gate compares against."""

    version: str
    model_uri: str
    run_id: str | None = None


def current_champion(client: MlflowClient, name: str) -> ChampionRef | None:
    """The version holding ``champion``, or None."""
    found = version_by_alias(client, name, CHAMPION)
    if found is None:
        return None
    return ChampionRef(
        version=str(found.version), model_uri=f"models:/{name}/{found.version}", run_id=found.run_id
    )


class Promotion(BaseModel):
    """The aliases after a promotion, and the ``previous`` it replaced (for a rollback)."""

    model_name: str
    champion_version: str
    previous_version: str | None
    replaced_previous: str | None = None
    moved: bool = True
    """False when the candidate already was champion: there is nothing to roll back."""


def promote_to_champion(
    client: MlflowClient,
    name: str,
    candidate_version: str,
    expected_champion: str | None,
    lock: Callable[[], AbstractContextManager[object]],
) -> Promotion:
    """Make the candidate ``champion`` and the former champion ``previous``.

    Args:
        client: Registry client.
        name: Registered model name.
        candidate_version: The version that passed the gate.
        expected_champion: The champion the gate compared against (None if there was none).
        lock: Factory of the lock that serialises promotions of this model.

    Returns:
        The champion and previous versions after the change.

    Raises:
        PromotionConflict: if the champion changed since the gate read it.
    """
    with lock():
        current = alias_version(client, name, CHAMPION)
        if current != expected_champion:
            raise PromotionConflict(
                f"Not promoting {name} version {candidate_version}: the champion is now "
                f"{_describe(current)}, not {_describe(expected_champion)} that the model gate "
                "compared it against. Another promotion finished first; run the model gate "
                "again to compare against the new champion."
            )
        if current == candidate_version:
            previous = alias_version(client, name, PREVIOUS)
            return Promotion(
                model_name=name,
                champion_version=current,
                previous_version=previous,
                replaced_previous=previous,
                moved=False,
            )
        replaced = alias_version(client, name, PREVIOUS)
        if current is not None:
            set_alias(client, name, PREVIOUS, current)
        set_alias(client, name, CHAMPION, candidate_version)
        if alias_version(client, name, CHALLENGER) == candidate_version:
            client.delete_registered_model_alias(name, CHALLENGER)
        client.set_model_version_tag(name, candidate_version, "mlops.promoted_at", _now())
    logger.info(
        "%s version %s is now 'champion'%s",
        name,
        candidate_version,
        f"; version {current} is 'previous'" if current else "",
    )
    return Promotion(
        model_name=name,
        champion_version=candidate_version,
        previous_version=current,
        replaced_previous=replaced,
    )


def roll_back_promotion(
    client: MlflowClient,
    promotion: Promotion,
    reason: str,
    lock: Callable[[], AbstractContextManager[object]],
) -> str | None:
    """Undo a promotion: ``champion`` back to the former champion, ``previous`` as it was.

    The rolled-back version gets ``challenger`` back and the reason as a tag. Nothing is
    written if another promotion has moved ``champion`` since, and no alias moves if the
    version already was champion before (a deploy run again for the champion).

    Returns:
        The champion after the rollback (None when the model had none before).

    Raises:
        PromotionConflict: if ``champion`` no longer points at the promoted version.
    """
    name, failed = promotion.model_name, promotion.champion_version
    if not promotion.moved:
        logger.warning(
            "%s version %s was champion before this deploy; aliases unchanged", name, failed
        )
        client.set_model_version_tag(name, failed, "deploy.reason", reason[:5000])
        return failed
    with lock():
        current = alias_version(client, name, CHAMPION)
        if current != failed:
            raise PromotionConflict(
                f"Not rolling back {name} version {failed}: the champion is now "
                f"{_describe(current)}. Another promotion moved it; leaving it alone."
            )
        restored = promotion.previous_version
        _set_or_clear(client, name, CHAMPION, restored)
        _set_or_clear(client, name, PREVIOUS, promotion.replaced_previous)
        set_alias(client, name, CHALLENGER, failed)
        client.set_model_version_tag(name, failed, "mlops.rolled_back_at", _now())
        client.set_model_version_tag(name, failed, "deploy.reason", reason[:5000])
    logger.warning(
        "%s version %s rolled back; champion is %s again", name, failed, _describe(restored)
    )
    return restored


def _set_or_clear(client: MlflowClient, name: str, alias: str, version: str | None) -> None:
    if version is not None:
        set_alias(client, name, alias, version)
    elif alias_version(client, name, alias) is not None:
        client.delete_registered_model_alias(name, alias)


def _describe(version: str | None) -> str:
    return f"version {version}" if version else "no champion"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
