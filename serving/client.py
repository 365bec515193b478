"""Talking to running serving instances: ask one to reload or to write its log out, score rows.

Used by the deploy stage and by simulated traffic (``serving/traffic.py``). Every call names the
instance in its error, so a failed deploy says which server did not answer or refused.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import orjson
import pandas as pd

from prefect_mlops.mlops.features import is_missing


class InstanceError(Exception):
    """A serving instance could not be reached, or answered with an error."""


@dataclass(frozen=True)
class ReloadAnswer:
    """What ``POST /admin/reload`` said: ``swapped``, ``unchanged`` or ``failed``."""

    status: str
    version: str
    error: str | None


def served_model(url: str, timeout_s: float = 10) -> str | None:
    """The model name the instance at ``url`` serves (its ``/version``), None if it cannot say."""
    try:
        reply = httpx.get(f"{url}/version", timeout=timeout_s)
        return str(reply.json()["model"]) if reply.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def request_reload(url: str, token: str | None, timeout_s: float) -> ReloadAnswer:
    """Ask the instance at ``url`` to load the version its alias points at now.

    Raises:
        InstanceError: unreachable, not authorised, or an answer that is not a reload outcome.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        reply = httpx.post(f"{url}/admin/reload", headers=headers, timeout=timeout_s)
    except httpx.HTTPError as error:
        raise InstanceError(f"{url} did not answer the reload: {error}") from None
    if reply.status_code in (401, 403):
        raise InstanceError(
            f"{url} refused the reload ({reply.status_code}): {_message(reply)} The deploy stage "
            "and the server must share MLOPS_SERVING_ADMIN_TOKEN."
        )
    try:
        body = reply.json()
        return ReloadAnswer(str(body["status"]), str(body["version"]), body.get("error"))
    except (ValueError, KeyError, TypeError):
        raise InstanceError(
            f"{url} answered the reload with {reply.status_code}: {reply.text[:300]}"
        ) from None


@dataclass(frozen=True)
class FlushAnswer:
    """What ``POST /admin/flush-log`` said: the rows written in all (on 200), or its text."""

    status_code: int
    written_rows: int | None
    text: str


def request_log_flush(url: str, token: str, timeout_s: float = 60) -> FlushAnswer:
    """Ask the instance at ``url`` to write its inference log out now (admin ``token``).

    Raises:
        httpx.HTTPError: the instance did not answer.
    """
    reply = httpx.post(
        f"{url}/admin/flush-log", headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
    )
    if reply.status_code == 200:
        return FlushAnswer(reply.status_code, reply.json()["written_rows"], reply.text)
    return FlushAnswer(reply.status_code, None, reply.text)


@dataclass(frozen=True)
class Scored:
    """An instance's answer to ``/invocations``: the predictions and the version that made them."""

    predictions: pd.DataFrame
    version: str
    seconds: float


def score(client: httpx.Client, url: str, rows: pd.DataFrame) -> Scored:
    """Send ``rows`` as a ``dataframe_split`` request and read the predictions.

    Raises:
        InstanceError: unreachable, or an answer other than 200 with predictions.
    """
    body = orjson.dumps({"dataframe_split": split_payload(rows)})
    started = time.perf_counter()
    try:
        reply = client.post(
            f"{url}/invocations",
            content=body,
            # Checks are not traffic: the instance keeps them out of its inference log.
            headers={"Content-Type": "application/json", "X-Inference-Log": "skip"},
        )
    except httpx.HTTPError as error:
        raise InstanceError(f"{url} did not answer /invocations: {error}") from None
    seconds = time.perf_counter() - started
    if reply.status_code != 200:
        raise InstanceError(
            f"{url} answered /invocations with {reply.status_code}: {_message(reply)}"
        )
    predictions = pd.DataFrame(reply.json()["predictions"])
    return Scored(predictions, reply.headers.get("X-Model-Version", ""), seconds)


def split_payload(rows: pd.DataFrame) -> dict:
    """Rows as MLflow's ``dataframe_split``: dates as ISO 8601 text, missing values as null."""
    columns = {}
    for name in rows.columns:
        values = rows[name]
        if pd.api.types.is_datetime64_any_dtype(values):
            values = values.dt.strftime("%Y-%m-%dT%H:%M:%S")
        columns[name] = [None if is_missing(v) else v for v in values.tolist()]
    data = [list(row) for row in zip(*columns.values(), strict=True)]
    return {"columns": [str(c) for c in rows.columns], "data": data}


def _message(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("message", reply.text))[:300]
    except ValueError:
        return reply.text[:300]


def replica_urls(url: str) -> list[str]:
    """One URL per IPv4 address the URL's host name resolves to: every ready pod behind a
    Kubernetes headless Service. An IP literal, or a name with one address, stays as it is;
    a name that does not resolve too (the reload then fails on it, naming it)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        return [url]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, parts.port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return [url]
    addresses = sorted({info[4][0] for info in found})
    if len(addresses) <= 1:
        return [url]
    port = f":{parts.port}" if parts.port else ""
    return [parts._replace(netloc=f"{address}{port}").geturl() for address in addresses]
