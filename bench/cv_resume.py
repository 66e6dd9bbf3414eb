"""Kill -9 a `texttune cv` run during its third fold, run it again, and compare with an uninterrupted run (issue 5).

Uses MiniLM on the first ROWS sentences of SST-5 (5 folds, 2 epochs) so the whole check takes minutes. Exit code 0
when the resumed run's cv_report.json metrics equal the uninterrupted run's.

python bench/cv_resume.py [--rows 1000] [--workdir /tmp/texttune-cv-resume]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _sst5 import sst5_slice


def cv(recipe: Path, run: Path) -> subprocess.Popen:
    command = ["texttune", "-q", "cv", str(recipe), "--set", f"output.dir={run}"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def metrics(run: Path) -> dict:
    report = json.loads((run / "cv_report.json").read_text())
    return {"oof": report["oof"], "per_fold": report["per_fold"], "confusion": report["confusion_matrix"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--workdir", default="/tmp/texttune-cv-resume")
    parser.add_argument("--kill-after", type=float, default=8.0, help="seconds into fold 3 at which to kill")
    args = parser.parse_args()
    work = sst5_slice(args.workdir, args.rows).parent
    recipe = work / "recipe.yaml"
    recipe.write_text(
        f"data: {{train: {work / 'train.tsv'}, text_columns: Phrase, target_columns: Sentiment, "
        "id_column: PhraseId}\n"
        "model: {max_length: 64}\ntraining: {epochs: 2, batch_size: 16, learning_rate: 1.0e-4}\ncv: {folds: 5}\n"
    )
    started = time.perf_counter()
    assert cv(recipe, work / "clean").wait() == 0
    clean_minutes = (time.perf_counter() - started) / 60
    crashed = work / "crashed"
    process = cv(recipe, crashed)
    while not (crashed / "fold-1" / "texttune.json").is_file():  # folds 1 and 2 done: fold 3 is training
        time.sleep(0.2)
        assert process.poll() is None, "the run ended before its third fold"
    time.sleep(args.kill_after)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = sorted(p.name for p in crashed.glob("fold-*") if (p / "texttune.json").is_file())
    assert done == ["fold-0", "fold-1"], f"the kill did not land in fold 3 (complete: {done}); change --kill-after"
    print(f"killed with SIGKILL during fold 3; complete folds then: {done}; report present: "
          f"{(crashed / 'cv_report.json').exists()}")  # fmt: skip
    assert cv(recipe, crashed).wait() == 0
    same = metrics(crashed) == metrics(work / "clean")
    oof = metrics(crashed)["oof"]
    print(f"uninterrupted run {clean_minutes:.1f} min; resumed report metrics identical: {same} "
          f"(OOF accuracy {oof['accuracy']:.4f}, macro-F1 {oof['f1_macro']:.4f})")  # fmt: skip
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
