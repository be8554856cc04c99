"""Faults a simulated board can be told to show, so that what the driver does with a broken device is tested
the same way as what it does with a working one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Faults:
    hang_at: int | None = None
    """The core stays busy forever on reaching this instruction (the ones before it run); only a CTRL.reset
    ends it."""
    corrupt: tuple[int, int] | None = None
    """(arena byte, bits): after every segment that ends at END, the core flips these bits of that byte."""
    dma_error: tuple[str, int] | None = None
    """(channel "mm2s" or "s2mm", DMASR error bit): the channel's next transfer stops with that error, once."""
