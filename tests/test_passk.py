import random
from math import comb

import pytest
from codediff.harness.passk import mean_pass_at_k, pass_at_k, reportable_ks


def test_pass_at_k_equals_closed_form_on_random_cases():
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 200)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        exact = 1.0 - comb(n - c, k) / comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_edges_and_errors():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)  # k > n is undefined, not 1.0
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    assert mean_pass_at_k([(2, 1), (2, 2)], 1) == pytest.approx(0.75)
    assert reportable_ks([10, 5], [1, 10, 100]) == [1]
