"""Hardware-near code: numba kernels and NVML access. Imports nothing of ours."""
