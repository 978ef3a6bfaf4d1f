"""Analysis tools: calibration metrics for predictive uncertainty."""
