"""Forward operators: denoising, inpainting, compressed sensing, CT, and adapters to other libraries."""
