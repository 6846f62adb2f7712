"""The input check and thread budget shared by the metric modules."""

import numpy as np
import pytest

from calosim.metrics._common import finite_matrix, free_cores


def test_finite_matrix_names_the_input_and_the_bad_columns() -> None:
    a = np.zeros((3, 4))
    a[1, 2] = np.nan
    a[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"^generated: 2 non-finite value\(s\) \(NaN/inf\) in column\(s\) \[0, 2\]$"):
        finite_matrix(a, "generated")
    with pytest.raises(ValueError, match=r"ref must have shape \(N, D\), got \(3,\)"):
        finite_matrix(np.ones(3), "ref")
    out = finite_matrix(np.arange(3), "ref", np.float32, allow_1d=True)
    assert out.shape == (3, 1) and out.dtype == np.float32


def test_free_cores_is_between_one_and_the_cap() -> None:
    assert free_cores(1) == 1
    assert 1 <= free_cores(64) <= 64
