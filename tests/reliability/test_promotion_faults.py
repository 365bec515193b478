"""Promotions under contention: ten at once, and five while a serving instance is under load.

Real MLflow registry (SQLite), the Prefect lock every promotion takes (the session's test
server), and a real `mlops serve` process answering clients while its champion moves.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import httpx
import pytest
from mlflow.tracking import MlflowClient

from prefect_mlops.mlops.errors import PromotionConflict
from prefect_mlops.model_registry.promotion import promote_to_champion
from prefect_mlops.model_registry.registry import CHAMPION, PREVIOUS, alias_version
from prefect_mlops.tasks.deploy import promotion_lock
from tests.fixtures import jsonable_rows, serving_process
from tests.ports import free_port
from tests.reliability.figures import Figures

MODEL = "fraud-detector"


def copies(client: MlflowClient, name: str, version: str, count: int) -> list[str]:
    """``count`` new versions of ``name`` holding the same files as ``MODEL`` ``version``."""
    if name != MODEL:
        client.create_registered_model(name)
    source = f"models:/{MODEL}/{version}"
    run_id = client.get_model_version(MODEL, version).run_id
    return [str(client.create_model_version(name, source, run_id).version) for _ in range(count)]


def test_ten_concurrent_promotions_have_exactly_one_winner(served_registry, figures: Figures):
    uri = served_registry["uri"]
    client = MlflowClient(uri, registry_uri=uri)
    name = "ten-promotions"
    first, *rivals = copies(client, name, served_registry["version"], 11)
    client.set_registered_model_alias(name, CHAMPION, first)
    barrier, outcomes = threading.Barrier(len(rivals)), {}

    def promote(version: str) -> None:
        own = MlflowClient(uri, registry_uri=uri)
        barrier.wait()
        try:
            outcomes[version] = promote_to_champion(own, name, version, first, promotion_lock(name))
        except PromotionConflict as conflict:
            outcomes[version] = conflict

    started = time.monotonic()
    threads = [threading.Thread(target=promote, args=(v,)) for v in rivals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    seconds = time.monotonic() - started
    winners = [v for v, outcome in outcomes.items() if not isinstance(outcome, Exception)]
    conflicts = [o for o in outcomes.values() if isinstance(o, PromotionConflict)]
    champion, previous = (
        alias_version(client, name, CHAMPION),
        alias_version(client, name, PREVIOUS),
    )
    held = len(winners) == 1 and len(conflicts) == 9 and (champion, previous) == (winners[0], first)
    figures.record(
        "registry",
        "10 concurrent promotions",
        "10 threads promote 10 versions over the same champion at the same instant",
        held,
        "exactly one won; the other nine were refused naming the winner; previous is the old "
        "champion",
        promotions=len(outcomes),
        winners=len(winners),
        refused=len(conflicts),
        seconds=round(seconds, 1),
    )
    assert held, outcomes
    for outcome in conflicts:
        assert f"the champion is now version {winners[0]}" in str(outcome)


@pytest.mark.long
def test_load_during_five_promotions_gets_no_error(served_registry, figures: Figures):
    """Clients keep scoring while the champion moves five times; every answer is a 200."""
    uri = served_registry["uri"]
    client = MlflowClient(uri, registry_uri=uri)
    original = served_registry["version"]
    versions = copies(client, MODEL, original, 5)
    token, port = "reliability-admin", free_port()
    env = os.environ | served_registry["env"] | {"MLOPS_SERVING_ADMIN_TOKEN": token}
    body = {"dataframe_records": jsonable_rows(served_registry["rows"].head(3))}
    answers, stop = Counter(), threading.Event()
    seen: set[str] = set()

    def load() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while not stop.is_set():
                response = http.post("/invocations", json=body)
                answers[response.status_code] += 1
                seen.add(response.headers.get("X-Model-Version", ""))

    swaps = []
    try:
        with serving_process(MODEL, port, env):
            clients = [threading.Thread(target=load) for _ in range(8)]
            for thread in clients:
                thread.start()
            admin = {"Authorization": f"Bearer {token}"}
            for version in versions:
                expected = alias_version(client, MODEL, CHAMPION)
                promote_to_champion(client, MODEL, version, expected, promotion_lock(MODEL))
                reload = httpx.post(
                    f"http://127.0.0.1:{port}/admin/reload", headers=admin, timeout=120
                )
                swaps.append(reload.json().get("status"))
            stop.set()
            for thread in clients:
                thread.join(timeout=60)
    finally:
        stop.set()
        client.set_registered_model_alias(MODEL, CHAMPION, original)
    errors = sum(n for status, n in answers.items() if status != 200)
    held = errors == 0 and swaps == ["swapped"] * 5 and set(versions) <= seen
    figures.record(
        "serving",
        "load during 5 promotions",
        "8 clients score continuously while the champion is promoted and hot-swapped 5 times",
        held,
        "every request answered 200; all 5 new versions served in turn",
        requests=sum(answers.values()),
        non_200=errors,
        swaps=swaps.count("swapped"),
        versions_seen=len(seen - {""}),
    )
    assert held, (answers, swaps, seen)


@pytest.fixture(autouse=True)
def _quiet_prefect_lock_logs(caplog):
    caplog.set_level("WARNING")
