"""SpineMet-FL benchmarks: `python -m benchmarks` prints one table of measured numbers."""
