from segmaker.training.early_stopping import EarlyStoppingRule, EarlyStoppingState


def run(mious, rule):
    """Feed per-epoch mIOUs; return (epoch after which training stops or None, final state)."""
    state = EarlyStoppingState()
    for epoch, miou in enumerate(mious):
        state = state.update(epoch, miou, rule)
        if state.should_stop(rule):
            return epoch, state
    return None, state


def test_stops_after_patience_epochs_without_gain():
    rule = EarlyStoppingRule(enabled=True, min_epochs=1, patience=2, tolerance=0.0)
    stopped_at, state = run([0.5, 0.6, 0.6, 0.59, 0.7], rule)
    assert stopped_at == 3
    assert (state.best_epoch, state.best_miou) == (1, 0.6)


def test_never_stops_before_min_epochs():
    rule = EarlyStoppingRule(enabled=True, min_epochs=5, patience=1, tolerance=0.0)
    stopped_at, _ = run([0.5, 0.4, 0.4, 0.4, 0.4, 0.4], rule)
    assert stopped_at == 4


def test_relative_gain_below_tolerance_is_no_gain_but_still_the_best():
    rule = EarlyStoppingRule(enabled=True, min_epochs=0, patience=2, tolerance=0.1)
    # 0.5 -> 0.54 is +8 % (< 10 %), 0.54 -> 0.56 is +3.7 %: two epochs without gain.
    stopped_at, state = run([0.5, 0.54, 0.56], rule)
    assert stopped_at == 2
    assert (state.best_epoch, state.best_miou) == (2, 0.56)


def test_gain_at_or_above_tolerance_resets_the_counter():
    rule = EarlyStoppingRule(enabled=True, min_epochs=0, patience=2, tolerance=0.1)
    stopped_at, state = run([0.5, 0.5, 0.55, 0.55], rule)
    assert stopped_at is None
    assert state.epochs_without_gain == 1


def test_disabled_rule_never_stops_but_tracks_the_best():
    rule = EarlyStoppingRule(enabled=False, min_epochs=0, patience=0, tolerance=0.0)
    stopped_at, state = run([0.3, 0.2, 0.1], rule)
    assert stopped_at is None
    assert state.is_best(0) and not state.is_best(2)
