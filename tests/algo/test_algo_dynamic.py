"""algo.dynamic.informative_groups: which groups give a group-relative estimator any signal (DAPO 2503.14476)."""

from algo.dynamic import informative_groups


def test_outcome_only():
    groups = {
        # all right: every advantage is 1 - mean(1, 1, 1) = 0, nothing to learn -> dropped
        0: [(1.0, ()), (1.0, ()), (1.0, ())],
        # all wrong: 0 - 0 = 0 for every sample -> dropped
        1: [(0.0, ()), (0.0, ()), (0.0, ())],
        # one right of three: mean 1/3, advantages 2/3, -1/3, -1/3 -> kept
        2: [(1.0, ()), (0.0, ()), (0.0, ())],
        # a fractional reward differing from the rest is enough -> kept
        3: [(0.5, ()), (0.5, ()), (0.25, ())],
    }
    assert informative_groups(groups, use_steps=False) == {2, 3}


def test_fewer_than_two_valid_samples_is_not_informative():
    groups = {
        4: [(1.0, ())],  # the other samples were masked: nothing to compare the survivor with -> dropped
        5: [],  # every sample masked -> dropped
        6: [(1.0, ()), (0.0, ())],  # two valid samples that differ -> kept
    }
    assert informative_groups(groups, use_steps=False) == {6}


def test_step_rewards_count_only_for_process_estimators():
    groups = {
        # same outcome, different step rewards: a process estimator normalises the step rewards across the
        # group, so step 0 gets +/- advantages -> kept with use_steps; an outcome estimator sees 1, 1 -> dropped
        7: [(1.0, (1.0, 1.0)), (1.0, (0.0, 1.0))],
        # same outcome and same step rewards: identical samples for either kind of estimator -> dropped
        8: [(0.0, (1.0, 0.0)), (0.0, (1.0, 0.0))],
        # different outcomes, same steps: informative for both
        9: [(0.0, (1.0,)), (1.0, (1.0,))],
        # step lists of different lengths differ (one sample wrote an extra step) -> kept with use_steps
        10: [(1.0, (1.0,)), (1.0, (1.0, 1.0))],
    }
    assert informative_groups(groups, use_steps=True) == {7, 9, 10}
    assert informative_groups(groups, use_steps=False) == {9}
