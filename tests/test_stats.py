"""thresher.stats: the paired statistics on hand-computed cases."""
import numpy as np
import pytest

from thresher.stats import domain_effects, seed_item_bootstrap


def test_seed_item_bootstrap_on_hand_cases():
    a = [[1, 1, 1, 0] * 25, [1, 1, 0, 0] * 25]
    b = [[1, 0, 0, 0] * 25, [1, 0, 0, 0] * 25]
    d, lo, hi = seed_item_bootstrap(a, b, n_boot=500)
    assert d == pytest.approx(((0.75 - 0.25) + (0.5 - 0.25)) / 2)
    assert 0 < lo < d < hi
    d, lo, hi = seed_item_bootstrap(b, b, n_boot=200)
    assert (d, lo, hi) == (0.0, 0.0, 0.0)


def test_domain_effects_effect_and_floor():
    domains = np.array(["a"] * 4 + ["b"] * 2)
    correct = np.array([1, 1, 0, 1, 0, 0])
    ref = np.array([0, 1, 0, 0, 0, 0])
    eff, var = domain_effects(correct, ref, domains, ["a", "b"], n_boot=4000, seed=0)
    np.testing.assert_allclose(eff, [0.5, 0.0])
    # diffs in a: 1 0 0 1 -> population variance .25, variance of a mean of 4 = .0625
    assert abs(var[0] - 0.0625) < 0.006
    assert var[1] == 0.25  # all-equal pairs: the floor 1 / n^2
    with pytest.raises(ValueError, match="no dev items"):
        domain_effects(correct, ref, domains, ["a", "c"])
