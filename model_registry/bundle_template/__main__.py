"""Predict from the command line: ``python -m <package> ROWS`` prints ``{"predictions": [...]}``.

ROWS is a CSV file, a JSON file (a list of row objects, or an MLflow scoring request such as
``{"dataframe_split": ...}``), or ``-`` for JSON on standard input. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from . import load


def read_rows(source: str) -> pd.DataFrame:
    """Rows from a CSV file, a JSON file or standard input (``-``)."""
    if source != "-" and Path(source).suffix.lower() == ".csv":
        return pd.read_csv(source)
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    document = json.loads(text)
    if isinstance(document, dict) and "dataframe_split" in document:
        split = document["dataframe_split"]
        return pd.DataFrame(split["data"], columns=split["columns"])
    if isinstance(document, dict):
        for key in ("dataframe_records", "instances", "inputs"):
            if key in document:
                return pd.DataFrame(document[key])
    return pd.DataFrame(document)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", help="CSV or JSON file of raw rows, or - for JSON on stdin.")
    args = parser.parse_args()
    predictor = load()
    try:
        predictions = predictor.predict(read_rows(args.rows))
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    json.dump({"predictions": predictions.to_dict(orient="records")}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
