"""GPU use and cost: minute rollups of NVML samples, their cost, the report and right-sizing."""
