"""Write the demo's small review table (train.csv and test.csv) into a folder: seeded, no download.

python examples/make_demo_data.py demo
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pandas as pd

SUBJECTS = [
    "The film",
    "This movie",
    "The plot",
    "The acting",
    "The soundtrack",
    "The ending",
    "The script",
    "The cast",
    "The director's new picture",
    "This sequel",
]
OPINIONS = {
    "positive": [
        "was a delight from start to finish",
        "moved me to tears in the best way",
        "is warm, funny and smart",
        "kept me gripped for two hours",
        "is the best thing I have seen this year",
        "felt fresh and honest",
        "won me over completely",
        "is beautifully made",
    ],
    "negative": [
        "was a tedious mess",
        "bored me to sleep",
        "is clumsy and predictable",
        "wasted a fine cast",
        "felt twice as long as it was",
        "is a loud, empty bore",
        "made no sense at all",
        "is the worst thing I have seen this year",
    ],
    "neutral": [
        "was about what I expected",
        "has its moments and its flaws",
        "is fine for a rainy afternoon",
        "neither impressed nor annoyed me",
        "is watchable but forgettable",
        "was okay, nothing more",
        "is a mixed bag",
        "did its job",
    ],
}
ENDINGS = [
    "",
    " Recommended with reservations.",
    " I would not watch it twice.",
    " Bring popcorn.",
    " My friends disagreed.",
    " The cinema was half empty.",
]


def make_rows(count: int, rng: random.Random, start: int) -> list[dict[str, str]]:
    rows = []
    for index in range(start, start + count):
        sentiment = rng.choice(sorted(OPINIONS))
        text = f"{rng.choice(SUBJECTS)} {rng.choice(OPINIONS[sentiment])}.{rng.choice(ENDINGS)}"
        rows.append({"review_id": f"rv{index:05d}", "review": text, "sentiment": sentiment})
    return rows


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    train, test = make_rows(480, rng, 0), make_rows(120, rng, 480)
    pd.DataFrame(train).to_csv(out / "train.csv", index=False)
    pd.DataFrame(test).drop(columns="sentiment").to_csv(out / "test.csv", index=False)
    print(f"wrote {out / 'train.csv'} ({len(train)} rows) and {out / 'test.csv'} ({len(test)} rows)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo")
