"""`recent_runs()`: the runs of an MLflow store as rows for `texttune runs`, newest first, folds under their cv."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from texttune.errors import TexttuneError
from texttune.tracking._mlflow import first_line, open_store, store_errors

# the metric that sums up a run of each kind, by task
_KEY_METRICS = {"regression": "mcrmse", "classification": "accuracy"}
_PREFIX = {
    "cv": "oof_",
    "blend": "oof_cross_fitted_",
    "tune": "best_",
    "trial": "best_",
    "seed": "best_",
    "lr-find": "",
    "train": "best_",
    "fold": "best_",
}


@dataclass(frozen=True)
class RunRow:
    """One line of `texttune runs`."""

    name: str
    kind: str
    task: str
    backbone: str
    metric: str
    value: float | None
    status: str
    started: datetime.datetime
    run_id: str
    depth: int  # 1 for a fold under its cv run


def _row(run: object, depth: int) -> RunRow:
    info, data = run.info, run.data
    kind = data.tags.get("texttune.kind", "?")
    task = data.params.get("task.type", "?")
    metric = "fine_tuning_start" if kind == "lr-find" else _PREFIX.get(kind, "") + _KEY_METRICS.get(task, "")
    return RunRow(
        name=info.run_name,
        kind=kind,
        task=task,
        backbone=data.params.get("model.backbone", "?"),
        metric=metric,
        value=data.metrics.get(metric),
        status=info.status,
        started=datetime.datetime.fromtimestamp(info.start_time / 1000),
        run_id=info.run_id,
        depth=depth,
    )


def recent_runs(tracking: str | None = None, experiment: str = "texttune", limit: int = 20) -> list[RunRow]:
    """The `limit` newest top-level runs of `experiment`, each cv run followed by its folds.

    Raises:
        TexttuneError: no such store or experiment.
    """
    mlflow, store = open_store(tracking, "texttune runs")
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            raise TexttuneError(f"{store}: no experiment '{experiment}'; pass --experiment with the recipe's one")
        runs = mlflow.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000)
    except store_errors() as exc:
        raise TexttuneError(f"{store}: the tracking store is not readable ({first_line(exc)})") from None
    children: dict[str, list[object]] = {}
    for run in runs:
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            children.setdefault(parent, []).append(run)
    rows: list[RunRow] = []
    for run in [r for r in runs if "mlflow.parentRunId" not in r.data.tags][:limit]:
        rows.append(_row(run, 0))
        rows.extend(
            _row(child, 1) for child in sorted(children.get(run.info.run_id, []), key=lambda r: r.info.run_name)
        )
    return rows


def format_runs(rows: list[RunRow]) -> str:
    """The rows as a table; folds indented under their cv run."""
    header = f"{'started':<16}  {'name':<22} {'kind':<7} {'task':<14} {'backbone':<28} {'metric':<22} {'status':<9}"
    lines = [header + "  run id"]
    for row in rows:
        name = ("  " * row.depth + row.name)[:22]
        score = f"{row.metric} {row.value:.4g}" if row.value is not None else row.metric or "-"
        backbone = row.backbone if len(row.backbone) <= 28 else "..." + row.backbone[-25:]
        lines.append(
            f"{row.started:%Y-%m-%d %H:%M}  {name:<22} {row.kind:<7} {row.task:<14} {backbone:<28} {score:<22} "
            f"{row.status:<9}  {row.run_id}"
        )
    return "\n".join(lines)
