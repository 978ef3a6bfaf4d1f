"""Generators ``x = G_theta(z)``: the DIP U-Net, the deep decoder, the two-layer and the linear generator."""

from invprior.generators.deep_decoder import DeepDecoder
from invprior.generators.linear import LinearGenerator
from invprior.generators.output_map import OutputMap
from invprior.generators.two_layer import TwoLayerGenerator
from invprior.generators.unet import UNet

__all__ = ["UNet", "DeepDecoder", "TwoLayerGenerator", "LinearGenerator", "OutputMap"]
