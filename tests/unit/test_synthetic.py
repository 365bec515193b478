import pandas as pd

from prefect_mlops.mlops.synthetic import iter_chunks, write_dataset


def test_same_seed_same_rows_and_chunking_bounds_memory(tmp_path):
    first = write_dataset("fraud", 2500, tmp_path / "a.parquet", seed=3, chunk_rows=1000)
    second = write_dataset("fraud", 2500, tmp_path / "b.parquet", seed=3, chunk_rows=1000)
    a, b = pd.read_parquet(first), pd.read_parquet(second)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 2500 and a["transaction_id"].is_unique
    assert [len(c) for c in iter_chunks("fraud", 2500, 3, 1000)] == [1000, 1000, 500]
    import pyarrow.parquet as pq

    assert pq.ParquetFile(first).num_row_groups == 3  # one row group per chunk
    assert not (tmp_path / "a.parquet.partial").exists()


def test_fraud_has_realistic_structure():
    frame = pd.concat(iter_chunks("fraud", 40_000, seed=1, chunk_rows=20_000))
    assert 0.005 < frame["is_fraud"].mean() < 0.04  # imbalanced
    assert frame["device_type"].isna().mean() > 0.01  # missing values
    assert pd.api.types.is_datetime64_any_dtype(frame["transaction_time"])
    assert frame["merchant_category"].nunique() == 12
    night = frame["transaction_time"].dt.hour.isin([0, 1, 2, 3, 4, 23])
    assert frame.loc[night, "is_fraud"].mean() > frame.loc[~night, "is_fraud"].mean()


def test_car_dealership_is_multiclass_and_unbalanced(tmp_path):
    path = write_dataset("car_dealership", 3000, tmp_path / "cars.csv", seed=2, chunk_rows=1000)
    frame = pd.read_csv(path)
    shares = frame["segment"].value_counts(normalize=True)
    assert len(shares) == 6
    assert shares.max() > 2 * shares.min()
    assert frame["previous_segment"].isna().any() and frame["credit_score"].isna().any()
