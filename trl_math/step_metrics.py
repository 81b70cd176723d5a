"""Training metrics at one collective per optimizer step.

A trainer adds each micro-batch's local sums (tensors on the device, no host sync) and, once the optimizer step's
last micro-batch is done, reduces them across processes in a single all-reduce and reads them back once: on a GPU,
each `.item()` of a reduced tensor per micro-batch would be a host sync and a collective.
"""

from __future__ import annotations

import torch


class StepTotals:
    """Sums of named quantities over an optimizer step's micro-batches, reduced over processes by `reduce`.

    Every process must call `reduce` at the same steps (with the same names, fixed here): it is collective."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self._totals: dict[str, torch.Tensor] = {}

    def add(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            if name not in self.names:
                raise KeyError(f"{name!r} is not one of {self.names}")
            value = value.detach().float()
            self._totals[name] = self._totals[name] + value if name in self._totals else value

    def reduce(self, accelerator) -> dict[str, float]:
        """The totals over all processes since the last call (one all-reduce, one read), then start over."""
        zero = torch.zeros((), device=accelerator.device)
        totals = torch.stack([self._totals.get(name, zero).to(accelerator.device) for name in self.names])
        self._totals = {}
        return dict(zip(self.names, accelerator.reduce(totals, reduction="sum").tolist()))
