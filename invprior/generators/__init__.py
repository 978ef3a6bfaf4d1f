"""Generators ``x = G_theta(z)``: the DIP U-Net, the deep decoder, the two-layer and the linear generator."""
