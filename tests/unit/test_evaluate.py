"""Evaluate: the dark-knowledge check (accuracy on left-out classes before and after a bias) and the latency rounds."""

from __future__ import annotations

import numpy as np

from pipeline import evaluate
from pipeline.evaluate import left_out_class_metrics


def logits_of_a_student_that_never_saw_class_3(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    logits = rng.normal(0.0, 1.0, (n, 4))
    logits[np.arange(n), y] += 3.0  # it knows the classes ...
    logits[:, 3] -= 5.0  # ... but class 3's output is held down, as if it was never a target
    return logits, y


def test_the_bias_is_chosen_on_validation_and_recovers_the_left_out_class():
    val, val_y = logits_of_a_student_that_never_saw_class_3(2000, 0)
    test, test_y = logits_of_a_student_that_never_saw_class_3(2000, 1)
    m = left_out_class_metrics(val, val_y, test, test_y, (3,))
    assert m["left_out_accuracy"] < 0.05
    assert 4.0 <= m["left_out_bias"] <= 6.5
    assert m["left_out_accuracy_after_bias"] > 0.85
    assert m["accuracy_after_bias"] > (test.argmax(1) == test_y).mean() + 0.15


def test_the_test_split_never_moves_the_bias():
    val, val_y = logits_of_a_student_that_never_saw_class_3(1000, 0)
    test, test_y = logits_of_a_student_that_never_saw_class_3(1000, 1)
    other_test, other_y = logits_of_a_student_that_never_saw_class_3(1000, 2)
    a = left_out_class_metrics(val, val_y, test, test_y, (3,))
    b = left_out_class_metrics(val, val_y, other_test, other_y, (3,))
    assert a["left_out_bias"] == b["left_out_bias"]


def test_no_bias_is_added_when_nothing_is_held_down():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    logits = rng.normal(0.0, 1.0, (500, 4))
    logits[np.arange(500), y] += 4.0
    assert left_out_class_metrics(logits, y, logits, y, (3,))["left_out_bias"] == 0.0


def test_interleaved_latencies_keeps_each_entrys_best_round_and_interleaves():
    calls: list[str] = []
    medians = {"teacher": iter([0.15, 0.095, 0.097]), "student": iter([0.053, 0.024, 0.025])}

    def timer(name: str) -> dict[str, float]:
        calls.append(name)
        m = next(medians[name])
        return {"median": m, "p95": 2 * m}

    best = evaluate.interleaved_latencies(
        {"teacher": lambda: timer("teacher"), "student": lambda: timer("student")}, rounds=3
    )
    assert calls == ["teacher", "student"] * 3
    assert best == {"teacher": {"median": 0.095, "p95": 0.19}, "student": {"median": 0.024, "p95": 0.048}}
