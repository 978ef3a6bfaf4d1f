"""Phantoms and bundled real images; no network access."""
