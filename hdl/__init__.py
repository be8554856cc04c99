"""The MyHDL sources of the DRQ/SDP overlay (in progress; see the project issues)."""
