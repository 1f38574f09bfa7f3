"""The optimizer's side of a training step: its step (with a closure for the optimizers
that evaluate the loss again, SAM and second-order probes' kin) and the weights it is
evaluated on (schedule-free methods)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def step_optimizer(
    opt: torch.optim.Optimizer,
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: Any,
) -> int:
    """One optimizer step after the engine's backward pass; the gradient evaluations it took.

    An optimizer whose ``optlab_closure`` is true gets a closure: it zeroes the gradients,
    evaluates the loss on the same batch again and back-propagates
    (``closure(create_graph=True)`` leaves gradients that keep their graph, for Hessian-
    vector products; the optimizer sets them to ``p.grad.detach()`` when done), and
    returns the loss. Every call counts as a gradient evaluation (SAM: two a step).
    """
    if not getattr(opt, "optlab_closure", False):
        opt.step()
        return 1
    calls = 0

    def closure(create_graph: bool = False) -> torch.Tensor:
        nonlocal calls
        calls += 1
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            with autocast():
                again = F.cross_entropy(net(x).float(), y)
            if create_graph:
                # Gradients that can be differentiated again; the optimizer detaches them
                # when it is done (autograd.grad, not backward: no reference cycle).
                params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
                grads = torch.autograd.grad(again, params, create_graph=True, allow_unused=True)
                for p, grad in zip(params, grads, strict=True):
                    p.grad = grad
            else:
                again.backward()
        return again.detach()

    opt.step(closure)
    return 1 + calls


def weights_for(opt: torch.optim.Optimizer, mode: str) -> None:
    """Optimizers that train on one set of weights and are evaluated on another (schedule-
    free methods) have ``train()`` and ``eval()``: the engine calls ``eval()`` before each
    epoch's evaluation, epoch probes, checkpoint and saved weights, and ``train()`` before
    training. Both must do nothing when the optimizer is already in that mode."""
    switch = getattr(opt, mode, None)
    if callable(switch):
        switch()
