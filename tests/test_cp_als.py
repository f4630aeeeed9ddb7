"""Our torch CP-ALS against tensorly's parafac on the same tensors."""

from __future__ import annotations

import pytest
import tensorly as tl
import torch
from tensorly.decomposition import parafac

from ranksearch.decompositions import relative_error, tensorly_torch
from ranksearch.decompositions._cp_als import cp_als


def _reconstruct(weights, factors):
    with tensorly_torch():
        return tl.cp_to_tensor((weights, list(factors)))


@pytest.mark.parametrize("seed", [1, 1234])
def test_exact_cp_tensor_is_recovered_like_tensorly(seed):
    g = torch.Generator().manual_seed(seed)
    factors = [torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (12, 10, 3, 3)]
    tensor = torch.einsum("or,ir,hr,wr->oihw", *factors)
    ours = cp_als(tensor, 5, tol=1e-10, max_iter=1000)
    assert ours.relative_error < 1e-6
    assert relative_error(tensor, _reconstruct(ours.weights, ours.factors)) < 1e-6


@pytest.mark.filterwarnings("ignore:Trying to compute SVD with n_eigenvecs")  # tensorly's own SVD init
@pytest.mark.parametrize("rank", [4, 16])
def test_error_on_a_noisy_kernel_matches_tensorly(rank):
    """Same SVD init, same tensor: our error is no worse than tensorly's (2% relative slack)."""
    g = torch.Generator().manual_seed(0)
    low = torch.einsum("or,ir,hr,wr->oihw", *(torch.randn(n, rank, generator=g) for n in (24, 16, 3, 3)))
    tensor = (low + 0.05 * low.std() * torch.randn(low.shape, generator=g)).double()
    ours = cp_als(tensor, rank, tol=1e-8, max_iter=300)
    with tensorly_torch():
        theirs = tl.cp_to_tensor(parafac(tensor, rank, init="svd", n_iter_max=300, tol=1e-10, random_state=0))
    their_error = relative_error(tensor, theirs)
    our_error = relative_error(tensor, _reconstruct(ours.weights, ours.factors))
    assert abs(our_error - ours.relative_error) < 1e-6  # the Gram-matrix fit is the true error
    assert our_error <= their_error * 1.02 + 1e-9


def test_stopping_rule_stops_before_the_cap_on_a_plateau():
    g = torch.Generator().manual_seed(0)
    tensor = torch.randn(32, 32, 3, 3, generator=g)
    result = cp_als(tensor, 8, tol=1e-4, max_iter=500)
    assert result.iterations < 500
