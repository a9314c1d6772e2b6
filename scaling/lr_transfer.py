"""Learning-rate transfer: held-out loss over a grid of LR multipliers at several widths, SP vs μP.

Under μP the LR that is best at the base width stays best at every width (Yang et al. 2022, "μTransfer");
under standard parametrization with Adam the optimum moves to smaller LRs as width grows. This module
trains every (width, LR) pair for the same steps on the same batches (scaling.coord_check's setup and
training loop: constant LR, no warmup, no weight decay, no clipping) and reports each one's loss on one
fixed batch of held-out windows; finding the optimum of each width (a parabola in log LR, with an
interval and an edge flag) is analysis.hparams's job.
"""
from __future__ import annotations

import dataclasses
import math

from scaling.coord_check import (CoordCheckError, CoordSetup, DivergedError, corpus_batches, make_stepper,
                                 run_config, train_and_probe)


@dataclasses.dataclass(frozen=True)
class TransferPoint:
    """One trained (parametrization, width, LR) and its final held-out loss."""
    parametrization: str  # 'standard' | 'mup'
    width: int  # d_model
    lr: float  # the Adam LR given (μP: hidden matrices get lr * base_d_model / width)
    loss: float  # mean next-token NLL (nats/token) on the held-out probe batch after all steps; inf if it diverged


def lr_transfer(setup: CoordSetup, lrs: tuple[float, ...], probe_size: int = 64,
                on_point=None) -> list[TransferPoint]:
    """Train setup.widths x lrs for setup.steps steps each; their held-out losses.

    A run whose training loss turns non-finite is recorded with loss inf (it diverged: that LR is too
    high), not dropped. on_point: called with each TransferPoint as it finishes (progress).
    """
    if len(lrs) < 3 or any(not lr > 0 for lr in lrs):
        raise CoordCheckError(f"lrs={lrs}: give at least three positive learning rates")
    batches, probe_batch = corpus_batches(setup, setup.steps, probe_size)
    points = []
    for width in setup.widths:
        stepper = make_stepper(run_config(setup, width))  # one compile per width, shared by its LRs
        for lr in sorted(lrs):
            try:
                *_, (_, _, loss) = train_and_probe(run_config(setup, width, lr), batches, probe_batch, every=0,
                                                   stepper=stepper)
            except DivergedError:
                loss = math.inf
            point = TransferPoint(setup.parametrization, width, float(lr), loss if math.isfinite(loss) else math.inf)
            points.append(point)
            if on_point:
                on_point(point)
    return points
