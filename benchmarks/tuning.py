"""Tuning: warm-started vs cold search at equal trial budgets, and both against fixed parameters.

On the datasets of ``benchmarks/tuning_data.py`` (twelve generated shapes and the two bundled
use cases), with the search the train stage runs (:mod:`mlops.tuning`, LightGBM's in-process
trial, one thread per trial):

1. **cold**: a 20-trial search per dataset (the config's own parameters first, then TPE).
   A search of 5 or 10 trials with the same seed is the start of the 20-trial one (the
   sampler does not depend on the budget; ``tests/unit/test_tuning.py`` checks it), so the
   best after 5, 10 and 20 trials are read off one search.
2. **warm**: the same search warm-started leave-one-dataset-out: the trial history is every
   *other* dataset's cold trials, so the nearest datasets' best configurations come first.
3. For each dataset: how many warm trials reach the cold search's 20-trial best validation
   loss; and the test-split loss (log-loss, RMSE) of the best configuration after 5, 10 and
   20 trials of each search, as a ratio to the config's fixed parameters. Noise is two
   standard deviations of the paired bootstrap (200 resamples of the test rows) of the
   difference between a tuned model's and the fixed model's test loss.

Results: the ``tuning`` section of ``docs/benchmarks.md`` and ``benchmarks/results/tuning*.csv``.
Run: ``make benchmark-tuning`` (or ``python benchmarks/tuning.py --only bin-small fraud``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import markers, write_section  # noqa: E402
from benchmarks.tuning_data import build_datasets  # noqa: E402
from prefect_mlops.mlops.dataset import TARGET_COLUMN, DatasetRef, read_split  # noqa: E402
from prefect_mlops.mlops.families import family  # noqa: E402
from prefect_mlops.mlops.families.lightgbm.trial import fit_lightgbm_trial  # noqa: E402
from prefect_mlops.mlops.features import build_features  # noqa: E402
from prefect_mlops.mlops.training_config import TrainingConfig, TuningConfig  # noqa: E402
from prefect_mlops.mlops.tuning import PastTrial, Search, run_in_turn, warm_start_configurations  # noqa: E402
from prefect_mlops.mlops.tuning.space import configured_params, with_params  # noqa: E402
from prefect_mlops.mlops.tuning.trial import loss_name, timed_outcome  # noqa: E402

BEGIN, END = markers("tuning")
BUDGETS = (5, 10, 20)
TRIALS = max(BUDGETS)
THREADS = 1
BOOTSTRAP = 200
RESULTS = ROOT / "benchmarks" / "results"


class Case:
    """One dataset: its splits in memory, its config, and what the searches found."""

    def __init__(self, name: str, described: str, training: TrainingConfig, dataset: DatasetRef):
        self.name, self.described, self.dataset = name, described, dataset
        tuning = TuningConfig(enabled=True, trials=TRIALS, seed=0)
        self.training = training.model_copy(update={"tuning": tuning})
        self.train = read_split(dataset, "train")
        self.validation = read_split(dataset, "validation")
        self.test = read_split(dataset, "test")
        self.searches: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}

    def run_trial(self, config: TrainingConfig):
        trainer = family("lightgbm")
        return timed_outcome(
            lambda: trainer.train_trial(self.train, self.validation, self.dataset, config, THREADS),
            THREADS,
        )

    def search(self, kind: str, starts: list) -> None:
        started = time.perf_counter()
        self.searches[kind] = run_in_turn(Search(self.training, starts), self.run_trial)
        self.seconds[kind] = time.perf_counter() - started

    def past_trials(self) -> list[PastTrial]:
        """The cold search's trials as the trial store would keep them."""
        result = self.searches["cold"]
        return [
            PastTrial(
                search_id=result.search_id,
                number=t.number,
                origin=t.origin,
                use_case=self.name,
                dataset_version=self.dataset.version,
                family="lightgbm",
                meta=self.dataset.meta_features,
                params=t.params,
                status=t.status,
                validation_loss=t.validation_loss,
                loss_name=loss_name(self.dataset.task),
                wall_time_s=t.wall_time_s,
                cores=t.threads,
            )
            for t in result.trials
        ]


# ---------------------------------------------------------------- scoring on the test split


def row_losses(task: str, raw: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row log-loss (classification) or squared error (regression) of raw scores."""
    if task == "regression":
        return (raw - labels) ** 2
    eps = 1e-15
    if task == "binary":
        p = np.clip(1 / (1 + np.exp(-raw)), eps, 1 - eps)
        return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    shifted = raw - raw.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels.astype(int)]


def aggregate(task: str, losses: np.ndarray) -> np.ndarray:
    """Mean log-loss or RMSE along the last axis."""
    mean = losses.mean(axis=-1)
    return np.sqrt(mean) if task == "regression" else mean


def test_losses(case: Case, params: dict) -> np.ndarray:
    """The per-row test losses of the model a configuration trains (as a trial trains it)."""
    config = with_params(case.training, params)
    fitted = fit_lightgbm_trial(case.train, case.validation, case.dataset, config, THREADS)
    features = build_features(case.test, case.dataset.feature_spec)
    raw = fitted.booster.predict(features, num_iteration=fitted.rounds, raw_score=True)
    labels = case.test[TARGET_COLUMN].to_numpy(dtype="float64")
    return row_losses(case.dataset.task, np.asarray(raw), labels)


def best_after(result, budget: int):
    """The best successful trial among the first ``budget``."""
    done = [t for t in result.trials[:budget] if t.status == "success"]
    return min(done, key=lambda t: (t.validation_loss, t.number))


def trials_to_reach(result, target: float) -> int | None:
    """The first trial whose running best is at most ``target`` (None: never)."""
    best = float("inf")
    for t in result.trials:
        if t.status == "success":
            best = min(best, t.validation_loss)
        if best <= target:
            return t.number
    return None


def evaluate(case: Case, rng: np.random.Generator) -> dict[str, Any]:
    """The dataset's figures: trials to reach, validation and test ratios, noise."""
    task = case.dataset.task
    cold, warm = case.searches["cold"], case.searches["warm"]
    fixed_params = configured_params(case.training)
    cache: dict[str, np.ndarray] = {}

    def losses(params: dict) -> np.ndarray:
        key = repr(sorted(params.items()))
        if key not in cache:
            cache[key] = test_losses(case, params)
        return cache[key]

    fixed = losses(fixed_params)
    rows = len(fixed)
    draws = rng.integers(0, rows, size=(BOOTSTRAP, rows))
    fixed_test = float(aggregate(task, fixed))
    fixed_valid = cold.trials[0].validation_loss  # trial 1 of a cold search is the config's own
    target = best_after(cold, TRIALS).validation_loss
    out: dict[str, Any] = {
        "dataset": case.name,
        "described": case.described,
        "task": task,
        "train_rows": case.dataset.row_counts["train"],
        "features": case.dataset.meta_features.n_features,
        "loss": loss_name(task),
        "fixed_test": fixed_test,
        "fixed_validation": fixed_valid,
        "cold_reaches_own_best": trials_to_reach(cold, target),
        "warm_reaches_cold_best": trials_to_reach(warm, target),
        "warm_started": warm.warm_started,
        "warm_first_origin": warm.trials[0].origin,
        "cold_seconds": case.seconds["cold"],
        "warm_seconds": case.seconds["warm"],
        "failed_trials": cold.failed + warm.failed,
    }
    for kind, result in (("cold", cold), ("warm", warm)):
        for budget in BUDGETS:
            best = best_after(result, budget)
            tuned = losses(best.params)
            diff = aggregate(task, tuned[draws]) - aggregate(task, fixed[draws])
            out[f"{kind}{budget}_validation"] = best.validation_loss / fixed_valid
            out[f"{kind}{budget}_test"] = float(aggregate(task, tuned)) / fixed_test
            out[f"{kind}{budget}_noise"] = 2 * float(diff.std()) / fixed_test
    return out


# ---------------------------------------------------------------- the report

NEAR = 0.01
"""The secondary reach: within this share of the cold search's 20-trial best."""


def with_reach_near(results: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Add, per dataset, the warm trials needed to come within :data:`NEAR` of the cold
    search's 20-trial best validation loss."""
    near = []
    for name in results["dataset"]:
        mine = trials[trials["dataset"] == name]
        cold = mine[(mine["search"] == "cold") & (mine["status"] == "success")]
        warm = mine[mine["search"] == "warm"].sort_values("number")
        target = cold["validation_loss"].min() * (1 + NEAR)
        best, hit = float("inf"), None
        for _, t in warm.iterrows():
            if t["status"] == "success":
                best = min(best, t["validation_loss"])
            if best <= target:
                hit = int(t["number"])
                break
        near.append(hit)
    return results.assign(warm_near_cold_best=near)


def reached(value: float | None) -> str:
    return f">{TRIALS}" if value is None or np.isnan(value) else f"{value:.0f}"


def median_trials(values: list[int | None]) -> float | None:
    """The median with "never" counted as beyond the budget (None when the median is)."""
    numbers = sorted(TRIALS + 1 if v is None else v for v in values)
    middle = float(np.median(numbers))
    return None if middle > TRIALS else middle


def render(frame: pd.DataFrame, run: dict[str, Any]) -> str:
    """The section: the warm start's reach, validation and test ratios, the targets."""
    lines = [
        BEGIN,
        f"Measured {run['date']} on {run['cores']} cores (shared with other work) by "
        f"`python benchmarks/tuning.py` in {run['minutes']:.0f} min: {len(frame)} datasets, "
        f"{TRIALS}-trial cold and warm searches each (one thread per trial, trials one after "
        "another), the fixed baseline and the test models. Validation and test figures are "
        "**ratios to the config's fixed parameters** (lower is better: the loss is log-loss, or "
        "RMSE for regression); the fixed parameters are TrainingConfig's defaults for the "
        "generated datasets and the bundled configs' own. The warm search is leave-one-dataset-"
        "out: its history is the other datasets' cold trials; it begins with the best "
        "configuration of each of the 5 nearest datasets of the same task (by meta-features), "
        "then the config's own parameters, then TPE. A search of 5 or 10 trials is the start "
        "of the 20-trial search with the same seed, so the budgets are read off one search.",
        "",
        "| dataset | shape | cold: trials to its own best | **warm: trials to reach the cold "
        f"20-trial best** | warm: trials to within {NEAR:.0%} of it | best validation after 5: "
        "cold / warm | after 10 | after 20 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    pairs = [(f"cold{b}_validation", f"warm{b}_validation") for b in BUDGETS]
    for _, r in frame.iterrows():
        shown = " | ".join(f"{r[c]:.3f} / {r[w]:.3f}" for c, w in pairs)
        lines.append(
            f"| {r['dataset']} | {r['described']} | {reached(r['cold_reaches_own_best'])} | "
            f"{reached(r['warm_reaches_cold_best'])} | {reached(r['warm_near_cold_best'])} | "
            f"{shown} |"
        )
    medians = {
        column: median_trials(list(frame[column].replace({np.nan: None})))
        for column in ("cold_reaches_own_best", "warm_reaches_cold_best", "warm_near_cold_best")
    }
    shown = " | ".join(f"{frame[c].median():.3f} / {frame[w].median():.3f}" for c, w in pairs)
    lines.append(
        f"| **median** | | {reached(medians['cold_reaches_own_best'])} | "
        f"**{reached(medians['warm_reaches_cold_best'])}** | "
        f"{reached(medians['warm_near_cold_best'])} | {shown} |"
    )
    lines += [
        "",
        "Test loss of the best configuration after N trials, as a ratio to the fixed parameters "
        "(± noise: two bootstrap standard deviations of the paired difference, as a share of "
        "the fixed loss):",
        "",
        "| dataset | fixed test loss | cold 5 | cold 10 | cold 20 | warm 5 | warm 10 | warm 20 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cells = [f"{kind}{b}" for kind in ("cold", "warm") for b in BUDGETS]
    for _, r in frame.iterrows():
        shown = " | ".join(_ratio(r[f"{c}_test"], r[f"{c}_noise"]) for c in cells)
        lines.append(f"| {r['dataset']} | {r['loss']} {r['fixed_test']:.4g} | {shown} |")
    medians_test = " | ".join(f"{frame[f'{c}_test'].median():.3f}" for c in cells)
    lines.append(f"| **median** | | {medians_test} |")
    lines += ["", *verdict(frame, medians), END]
    return "\n".join(lines)


def _ratio(ratio: float, noise: float) -> str:
    worse = ratio - 1 > noise
    text = f"{ratio:.3f} ±{noise:.3f}"
    return f"**{text} worse**" if worse else text


def verdict(frame: pd.DataFrame, medians: dict[str, float | None]) -> list[str]:
    """The targets, met or missed, and by how much."""
    cells = [f"{kind}{b}" for kind in ("cold", "warm") for b in BUDGETS]
    worse = [
        f"{r['dataset']} {c} ({r[f'{c}_test']:.3f}, noise ±{r[f'{c}_noise']:.3f})"
        for _, r in frame.iterrows()
        for c in cells
        if r[f"{c}_test"] - 1 > r[f"{c}_noise"]
    ]
    warm = medians["warm_reaches_cold_best"]
    met = warm is not None and warm <= 5
    first = (
        "- Target: warm start reaches the cold search's 20-trial best within 5 trials on the "
        f"median dataset: **{'met' if met else 'missed'}**, median {reached(warm)} trials "
        f"(within {NEAR:.0%} of it: {reached(medians['warm_near_cold_best'])}). At equal "
        "budgets the warm search's best validation loss is "
        + ", ".join(
            f"{frame[f'warm{b}_validation'].median():.3f} against the cold search's "
            f"{frame[f'cold{b}_validation'].median():.3f} after {b}"
            for b in BUDGETS
        )
        + " (medians of the ratios to the fixed parameters)."
    )
    second = (
        "- Target: the tuned candidate is never worse than the fixed parameters on the test "
        "split by more than noise: "
        + (
            "**met** (no cell above 1 + noise)."
            if not worse
            else f"**missed** in {len(worse)} of {len(frame) * len(cells)} cells: "
            + "; ".join(worse)
            + "."
        )
        + " The noise covers the sampling of the test rows, not the model's seed or the split."
    )
    better = {c: frame[f"{c}_test"].median() for c in cells}
    third = (
        "- Target: better than the fixed parameters on the median dataset: median test ratio "
        + ", ".join(f"{c} {v:.3f}" for c, v in better.items())
        + (": **met**." if all(v < 1 for v in better.values()) else ": **missed** where ≥ 1.")
    )
    return [first, second, third]


# ---------------------------------------------------------------- main


def run(names: list[str] | None, folder: Path) -> list[dict[str, Any]]:
    cases = [
        Case(name, described, config.training, dataset)
        for name, described, config, dataset in build_datasets(folder, names)
    ]
    for case in cases:
        case.search("cold", [])
        print(f"cold {case.name}: {case.seconds['cold']:.0f}s", flush=True)
    history = {case.name: case.past_trials() for case in cases}
    for case in cases:
        others = [t for name, trials in history.items() if name != case.name for t in trials]
        starts = warm_start_configurations(
            case.dataset.meta_features,
            "lightgbm",
            others,
            case.training.tuning.warm_start_datasets,
            case.training.tuning.space,
            configured_params(case.training),
        )
        case.search("warm", starts)
        print(f"warm {case.name}: {case.seconds['warm']:.0f}s", flush=True)
    rng = np.random.default_rng(0)
    results = []
    for case in cases:
        results.append(evaluate(case, rng))
        write_trials(case)
    return results


def write_trials(case: Case) -> None:
    rows = [
        {"dataset": case.name, "search": kind, **t.model_dump(exclude={"params"}), **t.params}
        for kind, result in case.searches.items()
        for t in result.trials
    ]
    path = RESULTS / "tuning_trials.csv"
    frame = pd.DataFrame(rows)
    header = not path.exists()
    frame.to_csv(path, mode="a", header=header, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="Datasets to run (default: all).")
    parser.add_argument(
        "--render", action="store_true", help="Only rewrite the section from the saved results."
    )
    parser.add_argument("--no-doc", action="store_true", help="Print only.")
    args = parser.parse_args()
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    facts = RESULTS / "tuning_run.json"
    if not args.render:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "tuning_trials.csv").unlink(missing_ok=True)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="tuning-bench-") as tmp:
            results = run(args.only, Path(tmp))
        pd.DataFrame(results).to_csv(RESULTS / "tuning.csv", index=False)
        run_facts = {
            "date": time.strftime("%Y-%m-%d"),
            "cores": os.cpu_count(),
            "minutes": (time.perf_counter() - started) / 60,
        }
        facts.write_text(json.dumps(run_facts))
    frame = with_reach_near(
        pd.read_csv(RESULTS / "tuning.csv"), pd.read_csv(RESULTS / "tuning_trials.csv")
    )
    section = render(frame, json.loads(facts.read_text()))
    print(section)
    if not args.no_doc:
        write_section("tuning", "Tuning", section)


if __name__ == "__main__":
    main()
