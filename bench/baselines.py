"""Classical baselines on exactly the validation split that `texttune train RECIPE` uses.

Prints the constant baseline (training mean / majority class), TF-IDF (1-2 grams) + ridge or logistic
regression, and, with --bundle, the texttune model's validation metric from its metrics.json, so all three sit
on one split:

    python bench/baselines.py examples/ellipse.yaml --bundle texttune-runs/ellipse
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, RidgeCV

from texttune.config import load_recipe
from texttune.metrics import baseline_metrics, best_metric, task_metrics
from texttune.postprocess import PostProcessing
from texttune.prepare import read_training_examples, training_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--bundle", type=Path, help="a texttune bundle trained with the same recipe")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, args.overrides)
    train, valid = read_training_examples(recipe)
    spec, train_y, valid_y = training_task(train), train.labels, valid.labels
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    train_x = vectorizer.fit_transform([" ".join(row) for row in zip(*train.texts.values())])
    valid_x = vectorizer.transform([" ".join(row) for row in zip(*valid.texts.values())])
    if spec.is_regression:
        model = RidgeCV(alphas=np.logspace(-1, 2, 10)).fit(train_x, train_y)
        outputs = model.predict(valid_x)
    else:
        model = LogisticRegression(C=2.0, max_iter=2000).fit(train_x, train_y)
        outputs = model.decision_function(valid_x)  # logits; the softmax step makes probabilities
    metric, _ = best_metric(spec)
    postprocess = PostProcessing.for_task(spec, recipe.task.clip_predictions)
    results = {
        "constant": baseline_metrics(train_y, valid_y, spec)[metric],
        "tfidf": task_metrics(outputs, valid_y, spec, postprocess)[metric],
    }
    if args.bundle:
        results["texttune"] = json.loads((args.bundle / "metrics.json").read_text())["valid"][metric]
    print(f"{len(train)} train rows, {len(valid)} validation rows, metric {metric}")
    for name, value in results.items():
        print(f"  {name:10s} {value:.4f}")
    print(json.dumps({"metric": metric, **results}))


if __name__ == "__main__":
    main()
