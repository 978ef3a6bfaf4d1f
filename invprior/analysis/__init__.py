"""Analysis tools: calibration metrics for predictive uncertainty, convergence measures (steady PSNR,
rise time), Jacobian spectra by randomised SVD and the two-layer generator theory check."""
