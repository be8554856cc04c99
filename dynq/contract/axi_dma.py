"""The Xilinx AXI DMA's simple-mode registers (PG021), as far as the overlay uses them.

The IP is Xilinx's, not ours, but the driver decodes its status bits into errors and the board-free device
models the IP register for register: both read the layout from here. pynq's own DMA driver, which the
runtime uses unmodified, has the same offsets written into it.
"""

from __future__ import annotations

CHANNELS: dict[str, int] = {"mm2s": 0x00, "s2mm": 0x30}
"""Offset of each channel's register block: MM2S streams memory to the core, S2MM the core to memory."""
CHANNEL_SPAN = 0x30
"""Bytes of each channel's register block."""

DMACR = 0x00
DMASR = 0x04
ADDRESS = 0x18
"""MM2S_SA / S2MM_DA: the buffer's physical address (low word)."""
ADDRESS_MSB = 0x1C
LENGTH = 0x28
"""Writing it starts the transfer; after an S2MM transfer it reads the bytes received."""

CR_RUN = 1 << 0
CR_RESET = 1 << 2
"""Soft reset of the whole IP (both channels); self-clearing."""

SR_HALTED = 1 << 0
SR_IDLE = 1 << 1
SR_INT_ERR = 1 << 4
SR_SLV_ERR = 1 << 5
SR_DEC_ERR = 1 << 6
SR_IOC_IRQ = 1 << 12
SR_ERR_IRQ = 1 << 14
SR_IRQS = SR_IOC_IRQ | SR_ERR_IRQ
"""Write-1-to-clear bits."""

ERRORS: dict[int, str] = {
    SR_INT_ERR: "internal error (a zero length, or a stream packet longer than the receive buffer)",
    SR_SLV_ERR: "slave error (the memory refused the access)",
    SR_DEC_ERR: "decode error (nothing answers at the buffer's address)",
}
"""DMASR error bits; any of them halts the channel until a reset."""


def describe_errors(status: int) -> str:
    """The error bits set in a DMASR word, in words."""
    return "; ".join(text for bit, text in ERRORS.items() if status & bit) or "no error bit set"
