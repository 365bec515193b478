"""The datasets of ``benchmarks/tuning.py``: generated shapes plus the bundled use cases.

Twelve generated datasets of varied shape (2k to 50k rows, 5 to 100 features, none to half
categorical, clean to noisy labels, balanced to 5% minority, binary, multiclass and
regression) from scikit-learn's generators, and the two bundled use cases (``fraud``,
``car_dealership``). Each is written to Parquet and preprocessed by the pipeline's own
function (typed, split 70/15/15 by a fixed seed, meta-features computed), so a search sees a
:class:`~mlops.dataset.DatasetRef` as the train stage does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.datasets import make_classification, make_friedman1, make_regression

from prefect_mlops.mlops.config import PipelineConfig, parse_config
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.source import fingerprint_source
from prefect_mlops.mlops.synthetic import write_dataset
from prefect_mlops.tasks.preprocessing import build_dataset_version

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shape:
    """A generated dataset: its size, task, categorical share, noise and class balance."""

    name: str
    task: str
    rows: int
    features: int
    informative: int
    categorical_share: float = 0.0
    noise: float = 0.0  # classification: share of flipped labels; regression: noise sd
    classes: int = 2
    minority: float | None = None  # binary: the positive class's share
    friedman: bool = False  # regression: Friedman #1 (non-linear) instead of linear

    def describe(self) -> str:
        """E.g. ``binary, 20,000 x 30, 40% categorical, 5% minority, 2% noise``."""
        parts = [f"{self.task}", f"{self.rows:,} x {self.features}"]
        if self.task == "multiclass":
            parts[0] += f" ({self.classes} classes)"
        if self.categorical_share:
            parts.append(f"{self.categorical_share:.0%} categorical")
        if self.minority:
            parts.append(f"{self.minority:.0%} minority")
        if self.friedman:
            parts.append("non-linear")
        if self.noise:
            parts.append(
                f"{self.noise:.0%} flipped labels"
                if self.task != "regression"
                else f"noise sd {self.noise:g}"
            )
        return ", ".join(parts)


SHAPES = (
    Shape("bin-small", "binary", 2_000, 8, 5, noise=0.02),
    Shape("bin-imbalanced", "binary", 20_000, 30, 8, minority=0.05, noise=0.01),
    Shape("bin-wide", "binary", 5_000, 100, 10, noise=0.03),
    Shape("bin-categorical", "binary", 10_000, 20, 8, categorical_share=0.5, noise=0.02),
    Shape("bin-noisy", "binary", 8_000, 15, 6, noise=0.25),
    Shape("bin-large", "binary", 50_000, 25, 10, minority=0.2, noise=0.05),
    Shape("multi-3", "multiclass", 6_000, 12, 6, classes=3, noise=0.02),
    Shape("multi-5-cat", "multiclass", 15_000, 30, 10, categorical_share=0.3, classes=5),
    Shape("multi-8-wide", "multiclass", 4_000, 60, 12, classes=8, noise=0.05),
    Shape("reg-small", "regression", 3_000, 5, 5, noise=10.0, friedman=True),
    Shape("reg-mid", "regression", 20_000, 40, 15, categorical_share=0.2, noise=25.0),
    Shape("reg-large", "regression", 40_000, 10, 5, noise=1.0, friedman=True),
)
BUNDLED = {"fraud": ("fraud_detection", 40_000), "car_dealership": ("car_dealership", 20_000)}
"""Generator -> (its config in configs/, rows generated)."""


def generated_frame(shape: Shape, seed: int = 0) -> pd.DataFrame:
    """The shape's rows: ``x0..`` features (the first ones binned into text categories) and
    ``target``."""
    if shape.task == "regression":
        if shape.friedman:
            x, y = make_friedman1(shape.rows, shape.features, noise=shape.noise, random_state=seed)
        else:
            x, y = make_regression(
                shape.rows,
                shape.features,
                n_informative=shape.informative,
                noise=shape.noise,
                random_state=seed,
            )
            y = y + 0.02 * y**2  # a curve trees must bend to
    else:
        weights = [1 - shape.minority] if shape.minority else None
        x, y = make_classification(
            shape.rows,
            shape.features,
            n_informative=shape.informative,
            n_redundant=min(2, shape.features - shape.informative),
            n_classes=shape.classes,
            weights=weights,
            flip_y=shape.noise,
            random_state=seed,
        )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(shape.features)])
    rng = np.random.default_rng(seed)
    for i in range(round(shape.features * shape.categorical_share)):
        levels = int(rng.integers(4, 31))
        codes = pd.qcut(frame[f"x{i}"], levels, labels=False, duplicates="drop")
        frame[f"x{i}"] = "v" + codes.astype(int).astype(str)
    return frame.assign(target=y)


def generated_config(shape: Shape, source: Path) -> PipelineConfig:
    """A use case for a generated dataset: default training parameters, a 70/15/15 split."""
    raw = {
        "name": shape.name,
        "data": {"source": str(source), "target": "target", "task": shape.task},
        "split": {"validation_fraction": 0.15, "test_fraction": 0.15, "seed": 42},
        "model": {"name": shape.name},
    }
    return parse_config(raw, origin=f"benchmarks/tuning.py ({shape.name})")


def bundled_config(generator: str, source: Path) -> PipelineConfig:
    """A bundled use case pointed at a generated file (its own training parameters)."""
    config_name, _ = BUNDLED[generator]
    raw = yaml.safe_load((ROOT / "configs" / f"{config_name}.yaml").read_text())
    raw["data"]["source"] = str(source)
    raw["data"].pop("synthetic")
    return parse_config(raw, origin=f"configs/{config_name}.yaml")


def build_datasets(
    folder: Path, names: list[str] | None = None
) -> list[tuple[str, str, PipelineConfig, DatasetRef]]:
    """Write and preprocess every dataset (or those named): (name, description, config, ref)."""
    store = str(folder / "store")
    out = []
    for shape in SHAPES:
        if names and shape.name not in names:
            continue
        source = folder / f"{shape.name}.parquet"
        generated_frame(shape).to_parquet(source, index=False)
        config = generated_config(shape, source)
        dataset = build_dataset_version(config, store, fingerprint_source(config.data))
        out.append((shape.name, shape.describe(), config, dataset))
    for generator, (config_name, rows) in BUNDLED.items():
        if names and generator not in names:
            continue
        source = write_dataset(generator, rows, folder / f"{generator}.parquet", seed=7)
        config = bundled_config(generator, source)
        dataset = build_dataset_version(config, store, fingerprint_source(config.data))
        meta = dataset.meta_features
        described = f"bundled `{config_name}`, {dataset.task}, {rows:,} x {meta.n_features}"
        out.append((generator, described, config, dataset))
    return out
