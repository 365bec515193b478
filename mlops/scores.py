"""A model's scores on one split of a dataset version, kept in the artifact store for reuse.

The evaluate stage scores the candidate on the test split and saves the scores here; the model
gate, a separate flow run (and on the stack a separate process), reads them instead of scoring
the split again, and keeps the champion's scores the same way, so a second gate on the same
dataset version does not score the champion again. What passes between stages is a
:class:`ScoresRef`, never the scores.

An entry is trusted only as far as it is checked:

- its name is a digest of everything that determines the scores: the model's immutable
  identity (a logged model, never a version number or an alias), the dataset version (a
  content hash), the split, the libraries the model predicts with and this file format;
- it is written under a hidden name and renamed into place, so no reader sees half a file;
- it holds its own key, its row count and a SHA-256 of the scores, all compared on reading.

An entry that is missing, unreadable or fails a comparison reads as None: the caller scores
again (and saves a good entry), never uses a wrong answer.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import io
import logging
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from .dataset import DatasetRef
from .families import predictor_module
from .model_files import PipelineModel
from .storage import SCORES, open_url, staging_url

logger = logging.getLogger(__name__)

FORMAT = 1
"""Version of the entry's layout and of what the scores are (:func:`mlops.prediction.class_scores`)."""


class ScoresRef(BaseModel):
    """Where a model's scores on one split of a dataset version are, and what they are of."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str
    model: str
    """The model's immutable identity (``models:/m-...``, or a version's source)."""
    dataset_version: str
    split: str
    rows: int
    scorer: str
    """The libraries the model predicts with, as ``name==version``."""


@lru_cache(maxsize=1)
def project_code() -> str:
    """A digest of this package's own code (``mlops/``: features, prediction, the families'
    predictors): scores kept by one version of it are not read by another, which might score
    the same model differently."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def scoring_libraries(model: PipelineModel) -> str:
    """The packages (with versions) a model's family predicts with, e.g. ``lightgbm==4.6.0``."""
    family = predictor_module(model.predictor.facts.family)
    return ";".join(f"{name}=={md.version(name)}" for name in family.REQUIREMENTS)


def scores_ref(dataset: DatasetRef, split: str, model: str, scorer: str) -> ScoresRef:
    """The entry of ``model``'s scores on ``split`` of ``dataset`` (it may not exist yet).

    Args:
        dataset: The dataset version; the entry lies in its folder.
        split: The split scored.
        model: The model's immutable identity (see :func:`model_registry.registry.model_identity`).
        scorer: The libraries it predicts with (:func:`scoring_libraries`).
    """
    key = "\n".join([model, dataset.version, split, scorer, str(FORMAT), project_code()])
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    return ScoresRef(
        uri=f"{dataset.uri.rstrip('/')}/{SCORES}/{split}/{name}.npz",
        model=model,
        dataset_version=dataset.version,
        split=split,
        rows=dataset.row_counts[split],
        scorer=scorer,
    )


def _key(ref: ScoresRef) -> str:
    return ref.model_dump_json(exclude={"uri"})


def save_scores(ref: ScoresRef, scores: np.ndarray) -> None:
    """Write the entry: under a hidden name first, then renamed into place.

    Raises:
        ValueError: when ``scores`` has not one row per row of the split.
    """
    scores = np.ascontiguousarray(scores, dtype="float64")
    if len(scores) != ref.rows:
        raise ValueError(f"{len(scores)} scores for the {ref.rows} rows of {ref.split}")
    buffer = io.BytesIO()
    np.savez(buffer, scores=scores, key=np.array(_key(ref)), sha256=np.array(_digest(scores)))
    fs, path = open_url(ref.uri)
    hidden = staging_url(path)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(hidden, buffer.getvalue())
    try:
        fs.mv(hidden, path)
    except BaseException:
        fs.rm_file(hidden)
        raise


def load_scores(ref: ScoresRef) -> np.ndarray | None:
    """The scores of an entry, or None when it is missing, unreadable or not this entry's."""
    fs, path = open_url(ref.uri)
    try:
        with fs.open(path, "rb") as handle:
            data = handle.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as entry:
            scores, key, digest = entry["scores"], str(entry["key"]), str(entry["sha256"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        logger.warning("Scores at %s unreadable (%s); scoring again", ref.uri, error)
        return None
    problem = _problem(ref, scores, key, digest)
    if problem:
        logger.warning("Scores at %s not used (%s); scoring again", ref.uri, problem)
        return None
    return scores


def _problem(ref: ScoresRef, scores: np.ndarray, key: str, digest: str) -> str | None:
    if key != _key(ref):
        return "they are of another model, dataset version or split"
    if scores.dtype != np.float64 or scores.ndim not in (1, 2) or len(scores) != ref.rows:
        return f"{scores.dtype} {scores.shape} for {ref.rows} rows"
    if _digest(scores) != digest:
        return "their checksum does not match"
    return None


def _digest(scores: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(scores).tobytes()).hexdigest()
