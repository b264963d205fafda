from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm.loss import IGNORE, next_token_loss


def both(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(our loss, its gradient, torch's loss, its gradient)."""
    ours_in = logits.clone().requires_grad_(True)
    theirs_in = logits.clone().requires_grad_(True)
    ours = next_token_loss(ours_in, targets)
    theirs = F.cross_entropy(theirs_in.reshape(-1, 11), targets.reshape(-1), ignore_index=IGNORE)
    ours.backward()
    theirs.backward()
    return ours, ours_in.grad, theirs, theirs_in.grad  # type: ignore[return-value]


@pytest.mark.parametrize("ignored", [0.0, 0.5])
def test_the_fused_loss_equals_torch_cross_entropy_with_ignored_targets(ignored: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11) * 3
    targets = torch.randint(0, 11, (3, 7))
    targets[torch.rand(3, 7) < ignored] = IGNORE
    ours, ours_grad, theirs, theirs_grad = both(logits, targets)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_grad, theirs_grad)
    if ignored:  # an ignored position neither counts nor gets a gradient
        assert (ours_grad[targets == IGNORE] == 0).all()


def test_nothing_to_score_is_a_zero_loss_with_no_gradient() -> None:
    logits = torch.randn(2, 4, 11, requires_grad=True)
    loss = next_token_loss(logits, torch.full((2, 4), IGNORE))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and (logits.grad == 0).all()
