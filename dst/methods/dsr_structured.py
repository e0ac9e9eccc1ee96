"""Structured DSR: DSR whose updates also remove whole channels, so the layers get physically
smaller while they train (the rule: docs/methods.md#structured-dsr; the cut: :mod:`dst.slim`).

Sources: the channel statistic and the gradual channel schedule follow Chase (Yin et al.,
*Dynamic Sparsity Is Channel-Level Sparsity Learner*, NeurIPS 2023: unit mean magnitude, channels
removed step by step during training while unstructured DST goes on); the cubic ramp is Zhu &
Gupta's (2017); budget, threshold and regrowth are DSR's (Mostafa & Wang, ICML 2019).
"""

from __future__ import annotations

import math

import torch

from .._checks import check_fraction
from ..slim import channel_weights
from .base import ChannelState, UpdateContext
from .dsr import DSR


class DSRStructured(DSR):
    """DSR plus channel removal. At each update, before DSR's prune, each channel group removes
    its lowest-scoring channels until ``floor(s_c(t) · C)`` of its ``C`` original channels are
    gone (keeping at least ``min_channels``), where

        s_c(t) = channel_sparsity · (1 − (1 − p)³),  p = clip((t − a)/(b − a), 0, 1),

    ``a, b = ramp[0]·stop_step, ramp[1]·stop_step``. A channel's score is its unit mean
    magnitude: Σ|w| over its producer row and consumer column (inactive weights count 0) divided
    by the number of positions. The removed channels' active weights join the weights DSR pruned
    by threshold and are regrown by DSR's rule (∝ survivors, at random, at zero), so the budget
    is exact; the threshold adapts on the threshold-pruned count only. ``channel_sparsity=0``
    is plain DSR.
    """

    name = "dsr_structured"
    removes_channels = True
    supports_blocks = False  # channels are its units
    needs_stop_step = True

    def __init__(self, prune_target: float | int = 0.1, threshold: float = 1e-3,
                 tolerance: float = 0.1, channel_sparsity: float = 0.5,
                 ramp: tuple[float, float] | list[float] = (0.1, 0.6), min_channels: int = 1):
        super().__init__(prune_target, threshold, tolerance)
        check_fraction(channel_sparsity, "channel_sparsity", allow_zero=True)
        if channel_sparsity >= 1:
            raise ValueError(f"channel_sparsity must be in [0, 1): a layer keeps channels, got "
                             f"{channel_sparsity!r}")
        ramp = (ramp,) if isinstance(ramp, (str, int, float)) else tuple(ramp)  # or a ListConfig
        if len(ramp) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     for v in ramp) or not 0 <= ramp[0] < ramp[1] <= 1:
            raise ValueError(f"ramp must be [start, end] fractions of the stop step with "
                             f"0 <= start < end <= 1, got {ramp!r}")
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or \
                min_channels < 1:
            raise ValueError(f"min_channels must be an int >= 1, got {min_channels!r}")
        self.channel_sparsity = float(channel_sparsity)
        self.ramp = (float(ramp[0]), float(ramp[1]))
        self.min_channels = min_channels

    def removed_target(self, step: int, stop_step: int, n_original: int) -> int:
        """Channels of a group of ``n_original`` removed by ``step``, in all."""
        a, b = self.ramp[0] * stop_step, self.ramp[1] * stop_step
        p = min(1.0, max(0.0, (step - a) / (b - a))) if b > a else 1.0
        frac = self.channel_sparsity * (1 - (1 - p) ** 3)
        return max(0, min(math.floor(frac * n_original + 1e-9), n_original - self.min_channels))

    def channels(self, ctx: UpdateContext, groups: list[ChannelState]):
        orders = []
        for g in groups:
            rows = channel_weights(g.producer, 0).abs()
            cols = channel_weights(g.consumer, 1).abs()
            umm = (rows.sum(1) + cols.sum(1)) / (rows.shape[1] + cols.shape[1])
            gone = g.n_original - g.n_channels
            k = self.removed_target(ctx.step, ctx.stop_step, g.n_original) - gone
            orders.append((umm.to(torch.float64), max(0, k)))
        return orders
