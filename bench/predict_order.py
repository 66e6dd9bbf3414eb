"""Shuffle a table, predict it with the CLI and with `Predictor.predict`, and compare row order and values.

python bench/predict_order.py BUNDLE TABLE
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from texttune import Predictor
from texttune.data import read_table


def main(bundle: str, table: str) -> None:
    frame = read_table(table).sample(frac=1.0, random_state=11)
    predictor = Predictor.load(bundle)
    id_column = predictor.info.id_column
    with tempfile.TemporaryDirectory() as scratch:
        shuffled, output = Path(scratch) / "shuffled.csv", Path(scratch) / "submission.csv"
        frame.to_csv(shuffled, index=False)
        command = ["texttune", "-q", "predict", bundle, "--input", str(shuffled), "--output", str(output)]
        subprocess.run(command, check=True)
        submission = read_table(output)
    same_order = submission[id_column].tolist() == frame[id_column].tolist()
    expected = predictor.predict(predictor.texts_of(frame))
    columns = [c for c in submission.columns if c != id_column]
    if predictor.task.is_regression:
        gap = float(np.abs(submission[columns].astype(float).to_numpy() - expected[columns].to_numpy()).max())
        same_values = gap < 1e-5
    else:
        gap = float((submission[columns[0]] != expected["label"]).sum())
        same_values = gap == 0
    print(f"{len(frame)} shuffled rows; ids in shuffled order: {same_order}; "
          f"CLI == Predictor.predict: {same_values} (max difference {gap:g})")  # fmt: skip
    sys.exit(0 if same_order and same_values else 1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
