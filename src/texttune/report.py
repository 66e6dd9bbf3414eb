"""`report.html` of a cv run: one self-contained page (inline PNGs and CSS, no network) that shows at a glance how
far the CV score can be trusted: per-fold spread, out-of-fold plots, post-processing with its cross-fitted
evidence, the worst-predicted rows, the constant and TF-IDF baselines on the same folds for scale, and the recipe.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from texttune import plots
from texttune._io import atomic_file
from texttune.config import Recipe
from texttune.metrics import best_metric, task_metrics
from texttune.postprocess import PostProcessing
from texttune.task import Examples, TaskSpec, encode_targets

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
WORST_ROWS = 20


def save_report(folder: Path, build: Callable[[], str]) -> None:
    """`folder/report.html` from `build()`, written atomically, and never fatal: the run or blend it describes is
    complete already, so a page that cannot be drawn is a warning."""
    try:
        page = build()
    except Exception as exc:
        logger.warning("%s not written (%s: %s); the run is complete", folder / REPORT_FILE, type(exc).__name__, exc)
        return
    with atomic_file(folder / REPORT_FILE) as staging:
        staging.write_text(page, encoding="utf-8")


def baselines(examples: Examples, folds: np.ndarray, spec: TaskSpec) -> dict[str, dict[str, float]]:
    """Out-of-fold metrics of two models fitted on the same folds: a constant (training mean, majority class) and
    TF-IDF of 1-2 grams with ridge or logistic regression. A transformer that does not beat them clearly is not
    learning."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge

    texts = np.asarray(_joined(examples), dtype=object)
    targets = examples.targets
    width = spec.num_outputs
    constant, tfidf = np.zeros((len(texts), width)), np.zeros((len(texts), width))
    for fold in np.unique(folds):
        train, held_out = folds != fold, folds == fold
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000)
        features = vectorizer.fit_transform(texts[train])
        if spec.is_regression:
            constant[held_out] = targets[train].mean(axis=0)
            tfidf[held_out] = (
                Ridge(alpha=1.0).fit(features, targets[train]).predict(vectorizer.transform(texts[held_out]))
            )
        else:
            counts = np.bincount(targets[train], minlength=width)
            constant[held_out] = np.eye(width)[counts.argmax()]
            model = LogisticRegression(max_iter=1000).fit(features, targets[train])
            probabilities = np.zeros((held_out.sum(), width))
            probabilities[:, model.classes_] = model.predict_proba(vectorizer.transform(texts[held_out]))
            tfidf[held_out] = probabilities

    def score(predictions: np.ndarray) -> dict[str, float]:  # scores, or class probabilities
        return task_metrics(predictions, targets, spec, PostProcessing())

    return {"constant": score(constant), "TF-IDF": score(tfidf)}


def _baselines_or_nothing(examples: Examples, folds: np.ndarray, spec: TaskSpec) -> dict[str, dict[str, float]]:
    """The baselines, or none where they cannot be fitted (texts without a repeated word, a training fold of one
    class): they are for scale, and the page goes on without them."""
    try:
        return baselines(examples, folds, spec)
    except ValueError as exc:
        logger.warning("report.html: no baselines (%s)", exc)
        return {}


def _joined(examples: Examples) -> list[str]:
    """Each row's text columns in one string, as a person reads them (the model joins them its own way)."""
    return [" | ".join(parts) for parts in zip(*examples.texts.values())]


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _figure(png: bytes, caption: str) -> str:
    return f"<figure>{_image(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(frame: pd.DataFrame, digits: int = 4) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.{digits}f}", border=0, escape=True)


def _worst(oof: pd.DataFrame, texts: dict[int, str], spec: TaskSpec) -> pd.DataFrame:
    """The rows the models got most wrong: largest mean absolute error over the targets, or least probability on
    the true class."""
    if spec.is_regression:  # one column per target: "true / predicted"
        errors = np.mean([np.abs(oof[f"pred_{t}"] - oof[t]) for t in spec.target_columns], axis=0)
        shown = {"mean abs error": errors}
        shown |= {t: [f"{a:g} / {b:.2f}" for a, b in zip(oof[t], oof[f"pred_{t}"])] for t in spec.target_columns}
    else:
        labels = encode_targets(oof, spec)
        probabilities = oof[[f"prob_{label}" for label in spec.labels]].to_numpy(dtype=float)
        label = spec.target_columns[0]
        errors = 1 - probabilities[np.arange(len(oof)), labels]
        shown = {"p(true)": 1 - errors, label: oof[label], f"pred_{label}": oof[f"pred_{label}"]}
    frame = pd.DataFrame({"row": oof["row"] + 1, "fold": oof["fold"], **shown})
    name = "text" if "text" not in frame.columns else "input text"  # a target may be called text
    frame.insert(2, name, [_cut(texts.get(int(r), "")) for r in oof["row"]])
    order = np.argsort(-np.asarray(errors), kind="stable")[:WORST_ROWS]
    return frame.iloc[order]


def _cut(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())  # line breaks would show as \\n in the table
    return text if len(text) <= limit else text[:limit] + " ..."


def write_report(
    run: Path, recipe: Recipe, examples: Examples, folds: np.ndarray, oof: pd.DataFrame, report: dict[str, Any]
) -> str:
    """The page, as a string (the caller writes it atomically as `report.html`)."""
    spec = examples.task
    sections = []
    names = [name for name in report["oof"] if name != "error_rate"]
    per_fold = pd.DataFrame(report["per_fold"])[["fold", "rows", *names]]
    summary = pd.DataFrame(
        [{"fold": "mean", "rows": per_fold["rows"].sum(), **per_fold[names].mean().to_dict()},
         {"fold": "std", "rows": "", **per_fold[names].std(ddof=0).to_dict()},
         {"fold": "OOF", "rows": report["rows"], **{n: report["oof"][n] for n in names}}]
    )  # fmt: skip
    sections.append(("folds", "Per fold and out of fold", _table(pd.concat([per_fold, summary], ignore_index=True))))
    scale = _baselines_or_nothing(examples, folds, spec)
    rows = [{"model": "this run (OOF)", **{n: report["oof"][n] for n in names}}]
    rows += [{"model": f"{name} (same folds)", **{n: values[n] for n in names}} for name, values in scale.items()]
    sections.append(("baselines", "Against baselines on the same folds", _table(pd.DataFrame(rows))))
    fitted = report.get("postprocess")
    if fitted:
        kept = ", ".join(step["name"] for step in fitted["steps"]) or "none (no step helped cross-fitted rows)"
        kept_for = fitted.get("kept", {})
        evidence = pd.DataFrame(
            {"metric": list(fitted["before"]), "before": list(fitted["before"].values()),
             "cross-fitted after": [fitted["cross_fitted"][k] for k in fitted["before"]],
             "kept": [("yes" if kept_for.get(k, any(kept_for.values())) else "no") for k in fitted["before"]]}
        )  # fmt: skip
        text = (
            f"<p>Kept: <b>{html.escape(kept)}</b>. Each fold's rows post-processed by a step fitted on the other "
            "folds' rows only; a step is kept only where this lowers the metric.</p>"
        )
        sections.append(
            ("postprocess", "Post-processing fitted on the out-of-fold predictions", text + _table(evidence))
        )
    if spec.is_regression:
        figures = _oof_figures(spec, oof, oof[[f"pred_{t}" for t in spec.target_columns]].to_numpy(dtype=float))
    else:
        probabilities = oof[[f"prob_{label}" for label in spec.labels]].to_numpy(dtype=float)
        figures = _oof_figures(spec, oof, probabilities, encode_targets(oof, spec))
    sections.append(("oof", "Out-of-fold predictions", figures))
    curves = [_figure(path.read_bytes(), path.parent.name) for path in sorted(run.glob("fold-*/training_curves.png"))]
    sections.append(("curves", "Training curves per fold", "".join(curves) or "<p>none found</p>"))
    texts = dict(zip(examples.rows.tolist(), _joined(examples)))
    sections.append(("worst", f"The {WORST_ROWS} worst-predicted rows", _table(_worst(oof, texts, spec), 3)))
    recipe_text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    sections.append(("recipe", "Recipe (resolved)", f"<pre>{html.escape(recipe_text)}</pre>"))
    lr_plot = plots.lr_find_plot(run)
    if lr_plot.is_file():
        caption = f"{lr_plot.name}, the last texttune lr-find of this recipe's output.dir"
        sections.append(("lr-find", "LR range test", _figure(lr_plot.read_bytes(), caption)))
    metric = report["metric"]
    head = (
        f"{html.escape(recipe.tracking.name or run.name)}: {report['folds']}-fold cv of {report['rows']} rows, "
        f"OOF {metric} {report['oof'][metric]:.4f} (folds {report['fold_mean']:.4f} &plusmn; {report['fold_std']:.4f})"
    )
    return _page("texttune cv report", head, sections)


def _page(title: str, head: str, sections: list[tuple[str, str, str]]) -> str:
    body = "".join(f'<section id="{key}"><h2>{heading}</h2>{content}</section>' for key, heading, content in sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}"
        "table{border-collapse:collapse;font-size:13px;margin:8px 0}"
        "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right;vertical-align:top}"
        "#worst td:nth-child(3){text-align:left;min-width:360px;max-width:560px}img{max-width:100%;margin:4px}"
        "figure{display:inline-block;margin:4px;width:48%}figure img{width:100%}pre{background:#f6f6f6;padding:8px}"
        f"</style></head><body><h1>{head}</h1>{body}</body></html>"
    )


def _oof_figures(
    spec: TaskSpec, truth: pd.DataFrame, predictions: np.ndarray, labels: np.ndarray | None = None
) -> str:
    """Predicted vs true per target (`predictions`: scores), or the confusion matrix and the reliability diagram
    (`predictions`: class probabilities, `labels`: the true classes' indices)."""
    if spec.is_regression:
        frame = truth.assign(**{f"pred_{t}": predictions[:, i] for i, t in enumerate(spec.target_columns)})
        return _image(plots.predicted_vs_true(frame, spec.target_columns), "predicted vs true")
    from sklearn.metrics import confusion_matrix

    names = list(spec.labels)
    matrix = confusion_matrix(labels, predictions.argmax(axis=1), labels=range(len(names)))
    return _image(plots.confusion({"labels": names, "counts": matrix.tolist()}), "confusion matrix") + _image(
        plots.reliability(predictions, labels), "reliability diagram"
    )


def write_blend_report(
    output: Path, manifest: dict[str, Any], spec: TaskSpec, truth: pd.DataFrame, predictions: np.ndarray,
    labels: np.ndarray | None,
) -> str:  # fmt: skip
    """The page of a blend (`texttune blend`, or the blend of a multi-seed cv run), as a string: each run's OOF
    metrics and their spread, the blend's weights and OOF metrics (fitted on all rows, and cross-fitted), its
    post-processing, its OOF figures (`predictions` post-processed), and links to the runs' own reports."""
    names = list(manifest["oof"])
    runs = pd.DataFrame(
        [{"run": run, **scores} for run, scores in zip(manifest["runs"], manifest["oof_runs"].values())]
    )
    spread = pd.DataFrame(
        [{"run": "mean of the runs", **runs[names].mean().to_dict()},
         {"run": "std of the runs", **runs[names].std(ddof=0).to_dict()},
         {"run": "blend (weights fitted on all rows)", **manifest["oof"]},
         {"run": "blend (cross-fitted weights)", **manifest["oof_cross_fitted"]}]
    )  # fmt: skip
    sections = [("runs", "Each run and the blend, out of fold", _table(pd.concat([runs, spread], ignore_index=True)))]
    weights = np.asarray(manifest["weights"], dtype=float)
    columns = spec.target_columns if weights.ndim == 2 else ["weight"]
    table = pd.DataFrame(weights.reshape(len(runs), -1), columns=list(columns))
    sections.append(("weights", "Weights (non-negative, summing to 1)", _table(table.assign(run=runs["run"]), 3)))
    evidence = manifest.get("cross_fitted") or {}
    if evidence:
        kept = ", ".join(step["name"] for step in manifest["postprocess"]) or "none (no step helped cross-fitted rows)"
        frame = pd.DataFrame(
            {"metric": list(evidence["before"]), "before": list(evidence["before"].values()),
             "cross-fitted after": [evidence["after"][k] for k in evidence["before"]],
             "kept": ["yes" if evidence["kept"].get(k) else "no" for k in evidence["before"]]}
        )  # fmt: skip
        sections.append(("postprocess", "Post-processing fitted on the blended out-of-fold predictions",
                         f"<p>Kept: <b>{html.escape(kept)}</b>.</p>" + _table(frame)))  # fmt: skip
    sections.append(("oof", "Out-of-fold predictions of the blend", _oof_figures(spec, truth, predictions, labels)))
    links = [
        f'<li><a href="{html.escape(run)}/{REPORT_FILE}">{html.escape(run)}</a></li>'
        for run in manifest["runs"]
        if (output / run / REPORT_FILE).is_file()
    ]
    sections.append(("reports", "The runs' own reports", f"<ul>{''.join(links)}</ul>" if links else "<p>none</p>"))
    metric = best_metric(spec)[0]
    head = (
        f"blend of {len(runs)} runs: OOF {metric} {manifest['oof'][metric]:.4f} (cross-fitted "
        f"{manifest['oof_cross_fitted'][metric]:.4f}); runs {runs[metric].mean():.4f} &plusmn; "
        f"{runs[metric].std(ddof=0):.4f}"
    )
    return _page("texttune blend report", head, sections)
