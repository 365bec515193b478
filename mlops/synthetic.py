"""Seeded synthetic data for the bundled use cases, written in chunks of any total size.

Each chunk is drawn from its own generator seeded by ``(seed, chunk index)``, so a file of
10 million rows never sits in memory at once and the same arguments give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_START = np.datetime64("2025-01-01T00:00:00")
_SECONDS_PER_YEAR = 365 * 24 * 3600


def _with_missing(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    values = values.astype(object if values.dtype.kind in "OU" else float)
    values[rng.random(len(values)) < rate] = None if values.dtype == object else np.nan
    return values


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fraud_chunk(rng: np.random.Generator, n: int, offset: int) -> pd.DataFrame:
    """Card transactions with about 1-2% fraud that depends on amount, hour, velocity and more."""
    merchants = np.array(
        [
            "grocery",
            "fuel",
            "restaurant",
            "online_retail",
            "electronics",
            "travel",
            "pharmacy",
            "entertainment",
            "jewelry",
            "gift_cards",
            "utilities",
            "clothing",
        ]
    )
    merchant_p = np.array([0.22, 0.12, 0.15, 0.14, 0.06, 0.05, 0.07, 0.06, 0.02, 0.02, 0.05, 0.04])
    merchant_risk = np.array([-0.6, -0.3, -0.4, 0.5, 0.9, 0.6, -0.5, 0.0, 1.3, 1.6, -0.8, 0.1])
    countries = np.array(
        [
            "US",
            "GB",
            "DE",
            "FR",
            "ES",
            "IT",
            "NL",
            "CA",
            "BR",
            "MX",
            "IN",
            "NG",
            "RU",
            "CN",
            "JP",
            "AU",
            "ZA",
            "TR",
            "AR",
            "PL",
        ]
    )
    country_p = np.r_[
        0.55,
        0.08,
        0.06,
        0.05,
        0.03,
        0.03,
        0.02,
        0.04,
        0.02,
        0.02,
        0.02,
        0.01,
        0.01,
        0.01,
        0.02,
        0.01,
        0.005,
        0.005,
        0.005,
        0.005,
    ]
    country_p = country_p / country_p.sum()

    seconds = rng.integers(0, _SECONDS_PER_YEAR, n)
    times = _START + seconds.astype("timedelta64[s]")
    hour = (seconds // 3600) % 24
    merchant_idx = rng.choice(len(merchants), n, p=merchant_p)
    country_idx = rng.choice(len(countries), n, p=country_p)
    amount = np.round(rng.lognormal(3.4 + 0.4 * (merchant_risk[merchant_idx] > 0.8), 1.0, n), 2)
    velocity = rng.poisson(1.5, n)
    card_age = rng.gamma(2.0, 400.0, n)
    distance = rng.lognormal(2.0, 1.2, n)
    customer_age = np.clip(rng.normal(44, 15, n), 18, 95).round()
    device = rng.choice(
        np.array(["mobile", "desktop", "tablet", "pos_terminal"]), n, p=[0.45, 0.2, 0.05, 0.3]
    )
    is_foreign = (country_idx != 0).astype(np.int8)

    night = ((hour <= 4) | (hour >= 23)).astype(float)
    logit = (
        1.6
        * (
            0.55 * np.log1p(amount)
            + 1.1 * night
            + 0.35 * velocity
            + 0.9 * (card_age < 60)
            + 0.6 * is_foreign
            + merchant_risk[merchant_idx]
            + 0.25 * np.log1p(distance)
            - 0.01 * (customer_age - 44)
        )
        - 11.3
    )
    is_fraud = (rng.random(n) < _sigmoid(logit)).astype(np.int8)

    return pd.DataFrame(
        {
            "transaction_id": [f"tx-{i:010d}" for i in range(offset, offset + n)],
            "transaction_time": times,
            "amount": amount,
            "merchant_category": merchants[merchant_idx],
            "country": countries[country_idx],
            "device_type": _with_missing(rng, device, 0.04),
            "card_age_days": _with_missing(rng, card_age.round(), 0.02),
            "customer_age": _with_missing(rng, customer_age, 0.03),
            "transactions_last_24h": velocity,
            "distance_from_home_km": _with_missing(rng, distance.round(2), 0.05),
            "is_foreign": is_foreign,
            "is_fraud": is_fraud,
        }
    )


def car_dealership_chunk(rng: np.random.Generator, n: int, offset: int) -> pd.DataFrame:
    """Dealership customers and the car segment each one bought (six unbalanced classes)."""
    segments = np.array(["compact", "sedan", "suv", "pickup", "minivan", "luxury"])
    regions = np.array(["urban_north", "urban_south", "suburban", "rural", "coastal", "mountain"])
    fuels = np.array(["petrol", "diesel", "hybrid", "electric"])

    seconds = rng.integers(0, _SECONDS_PER_YEAR, n)
    visit = _START + seconds.astype("timedelta64[s]")
    month = ((seconds // (30 * 24 * 3600)) % 12) + 1
    age = np.clip(rng.normal(45, 14, n), 18, 90).round()
    income = np.round(rng.lognormal(11.0, 0.5, n), -2)
    household = np.clip(rng.poisson(1.6, n) + 1, 1, 9)
    children = np.clip(household - 1 - rng.integers(0, 2, n), 0, None)
    region_idx = rng.choice(len(regions), n, p=[0.22, 0.2, 0.28, 0.14, 0.1, 0.06])
    credit = np.clip(rng.normal(690, 70, n), 300, 850).round()
    trade_in = (rng.random(n) < 0.4).astype(np.int8)
    trade_value = np.where(trade_in == 1, np.round(rng.lognormal(9.0, 0.6, n), -1), 0.0)
    commute = rng.lognormal(2.8, 0.7, n).round(1)
    fuel_idx = rng.choice(len(fuels), n, p=[0.5, 0.15, 0.22, 0.13])
    log_income = np.log(income)
    rural = (regions[region_idx] == "rural") | (regions[region_idx] == "mountain")

    income_z = (log_income - 11.0) / 0.5
    age_z = (age - 45) / 14
    scores = np.stack(
        [
            1.0 - 1.2 * age_z - 1.0 * income_z - 0.8 * (household - 2.6),  # compact
            1.2 + 0.3 * income_z - 0.3 * (household - 2.6) + 0.6 * age_z,  # sedan
            0.8 + 0.7 * (household - 2.6) + 1.0 * rural + 0.5 * (month >= 10),  # suv
            -1.0 + 2.6 * rural + 1.0 * (fuels[fuel_idx] == "diesel") - 0.8 * (age < 30),  # pickup
            -2.2 + 1.6 * children,  # minivan
            -3.0 + 2.4 * income_z + 0.01 * (credit - 690) + 0.8 * trade_in,  # luxury
        ],
        axis=1,
    )
    scores = 1.5 * scores + rng.gumbel(size=scores.shape)
    segment = segments[scores.argmax(axis=1)]
    previous = np.where(trade_in == 1, segments[rng.integers(0, len(segments), n)], None)

    return pd.DataFrame(
        {
            "customer_id": [f"cust-{i:09d}" for i in range(offset, offset + n)],
            "visit_date": visit,
            "age": age,
            "annual_income": _with_missing(rng, income, 0.03),
            "household_size": household,
            "children": children,
            "region": regions[region_idx],
            "credit_score": _with_missing(rng, credit, 0.05),
            "has_trade_in": trade_in,
            "trade_in_value": trade_value,
            "previous_segment": previous,
            "commute_km": commute,
            "preferred_fuel": _with_missing(rng, fuels[fuel_idx], 0.06),
            "segment": segment,
        }
    )


GENERATORS: dict[str, Callable[[np.random.Generator, int, int], pd.DataFrame]] = {
    "fraud": fraud_chunk,
    "car_dealership": car_dealership_chunk,
}


def iter_chunks(
    generator: str, rows: int, seed: int = 0, chunk_rows: int = 250_000
) -> Iterator[pd.DataFrame]:
    """Yield ``rows`` rows of a use case in frames of at most ``chunk_rows`` rows.

    Raises:
        ValueError: for an unknown generator name.
    """
    if generator not in GENERATORS:
        raise ValueError(f"Unknown generator '{generator}'; choose one of {sorted(GENERATORS)}.")
    make_chunk = GENERATORS[generator]
    for index in range(math.ceil(rows / chunk_rows)):
        offset = index * chunk_rows
        n = min(chunk_rows, rows - offset)
        yield make_chunk(np.random.default_rng([seed, index]), n, offset)


def write_dataset(
    generator: str,
    rows: int,
    out: str | Path,
    seed: int = 0,
    chunk_rows: int = 250_000,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a synthetic dataset chunk by chunk to a CSV or Parquet file.

    Parquet files get one row group per chunk so Dask can read them in partitions.
    The file appears under its final name only once it is complete.

    Args:
        generator: ``fraud`` or ``car_dealership``.
        rows: Total number of rows.
        out: Destination; ``.csv`` writes CSV, anything else Parquet.
        seed: Seed of the whole dataset.
        chunk_rows: Rows held in memory at a time.
        progress: Called with the number of rows written so far.

    Returns:
        The path written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    written = 0
    writer: pq.ParquetWriter | None = None
    try:
        for chunk in iter_chunks(generator, rows, seed, chunk_rows):
            if out.suffix == ".csv":
                chunk.to_csv(partial, mode="a" if written else "w", header=not written, index=False)
            else:
                table = pa.Table.from_pandas(chunk, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(partial, table.schema)
                writer.write_table(table.cast(writer.schema))
            written += len(chunk)
            if progress:
                progress(written)
    finally:
        if writer is not None:
            writer.close()
    partial.replace(out)
    return out
