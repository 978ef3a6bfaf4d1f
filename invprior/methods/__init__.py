"""Reconstruction methods: classical baselines now, DIP-type methods later."""
