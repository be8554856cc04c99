"""Running builds: artifact verification, the bit-exact emulator, the Python API."""
