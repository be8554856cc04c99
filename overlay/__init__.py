"""The Vivado block-design and overlay-package build (in progress; see the project issues)."""
