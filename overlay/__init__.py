"""The Vivado overlay build (`dynq overlay build`, `dynq overlay check`; docs/overlay-build.md).

- `ps`: what the Zynq-7000 and Zynq UltraScale+ PS IPs call the ports, clocks and segments of the address map;
- `core_ip`: the core as a Vivado IP, its interfaces derived from the MyHDL core's ports;
- `tcl`: `params.tcl` (every value the fixed scripts in `scripts/` use) from the contract and the board file;
- `vivado`: running the build script in Vivado, with progress and a bounded time;
- `package`: `overlay.json` and the check of a package's `.hwh` with pynq's parser;
- `build`: the build directory, written and moved into place atomically.
"""
