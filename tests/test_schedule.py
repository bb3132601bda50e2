import math

import pytest

from segmaker.errors import UserError
from segmaker.training.schedule import LearningRateSchedule, schedule_for


def test_poly_decays_from_base_to_zero_with_power_0_9():
    schedule = LearningRateSchedule(base_lr=0.1, kind="poly", total_iterations=100)
    assert schedule.at(0) == pytest.approx(0.1)
    assert schedule.at(50) == pytest.approx(0.1 * 0.5**0.9)
    assert schedule.at(100) == pytest.approx(0.0)


def test_cosine_is_half_at_the_middle():
    schedule = LearningRateSchedule(base_lr=0.2, kind="cosine", total_iterations=10)
    assert schedule.at(0) == pytest.approx(0.2)
    assert schedule.at(5) == pytest.approx(0.1)
    assert schedule.at(10) == pytest.approx(0.0, abs=1e-12)


def test_step_multiplies_by_factor_at_each_boundary():
    schedule = LearningRateSchedule(
        base_lr=1.0, kind="step", total_iterations=30, step_iterations=(10, 20), step_factor=0.1
    )
    assert [schedule.at(i) for i in (0, 9, 10, 19, 20, 29)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_warmup_rises_linearly_then_decay_starts_at_base():
    schedule = LearningRateSchedule(base_lr=0.4, kind="poly", total_iterations=14, warmup_iterations=4)
    assert [schedule.at(i) for i in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert schedule.at(4) == pytest.approx(0.4)
    assert schedule.at(9) == pytest.approx(0.4 * 0.5**0.9)


class _Config:
    learning_rate = 0.01
    lr_scheduler = "step"
    epochs = 4
    warmup_epochs = 1
    lr_scheduler_step = (2, 3)
    lr_scheduler_factor = 0.5


def test_schedule_for_turns_epochs_into_iterations():
    schedule = schedule_for(_Config(), iterations_per_epoch=5)
    assert schedule.total_iterations == 20
    assert schedule.warmup_iterations == 5
    assert schedule.step_iterations == (10, 15)
    assert schedule.at(12) == pytest.approx(0.005)
    assert math.isclose(schedule.at(0), 0.002)


def test_no_iterations_is_a_user_error():
    with pytest.raises(UserError, match="no iteration"):
        LearningRateSchedule(base_lr=0.1, kind="poly", total_iterations=0)
