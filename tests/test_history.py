"""The one reader of the Trainer's logs: parsing, the run's step and epoch axes across stages, tracked names."""

from __future__ import annotations

from types import SimpleNamespace

from texttune.history import Entry, History, parse_log


def test_log_dicts_are_parsed_once_into_training_logs_and_evaluations() -> None:
    assert parse_log({"loss": 0.5, "learning_rate": 1e-4, "grad_norm": 2.0, "epoch": 0.1}) == (
        "train",
        {"loss": 0.5, "learning_rate": 1e-4, "grad_norm": 2.0},
    )
    evaluation = {"eval_loss": 0.4, "eval_accuracy": 0.8, "eval_runtime": 1.2, "eval_samples_per_second": 9.0}
    assert parse_log(evaluation) == ("eval", {"loss": 0.4, "accuracy": 0.8})
    assert parse_log({"train_loss": 0.6, "train_runtime": 3.0, "epoch": 1.0}) is None  # the end-of-run summary


def test_stages_continue_one_step_and_epoch_axis() -> None:
    seen: list[Entry] = []
    history = History([seen.append], stage_epochs=[0.5, 2.0])
    for stage, (steps, epoch) in enumerate([(63, 0.504), (250, 2.0)]):  # a half-epoch stage rounds up its steps
        history.on_train_begin(None, None, None)
        history.on_log(None, SimpleNamespace(global_step=steps, epoch=epoch), None, logs={"loss": 1.0 - stage})
        history.on_log(None, SimpleNamespace(global_step=steps, epoch=epoch), None, logs={"eval_loss": 0.9})
        history.on_train_end(None, SimpleNamespace(global_step=steps, epoch=epoch), None)
    assert [(e.kind, e.stage, e.step, e.epoch) for e in seen] == [
        ("train", 0, 63, 0.504),
        ("eval", 0, 63, 0.504),
        ("train", 1, 313, 2.5),  # the planned 0.5 epochs of stage 0, then stage 1's own count
        ("eval", 1, 313, 2.5),
    ]
    assert history.entries == seen and history.stage_starts == [63]
    assert seen[0].tracked() == {"train_loss": 1.0, "epoch": 0.504}
    assert seen[1].tracked() == {"valid_loss": 0.9, "epoch": 0.504}
    assert Entry.from_dict("eval", seen[3].to_dict()) == seen[3]


def test_a_restored_history_goes_on_where_it_stopped_and_replays_to_listeners() -> None:
    history = History(stage_epochs=[1.0, 1.0])
    history.on_train_begin(None, None, None)
    history.on_log(None, SimpleNamespace(global_step=4, epoch=0.5), None, logs={"loss": 0.7})
    replayed: list[Entry] = []
    resumed = History([replayed.append], stage_epochs=[1.0, 1.0])
    resumed.restore(history.state(), mid_stage=True)
    assert replayed == history.entries
    resumed.on_train_begin(None, None, None)  # the resumed Trainer goes on with stage 0
    resumed.on_log(None, SimpleNamespace(global_step=6, epoch=0.75), None, logs={"loss": 0.6})
    assert [(e.stage, e.step) for e in resumed.entries] == [(0, 4), (0, 6)]
