"""Forward operators: denoising, inpainting, compressed sensing, CT, and adapters to other libraries."""

from invprior.operators.compressed_sensing import GaussianCS, SubsampledDCT
from invprior.operators.ct import CTGeometry, FanBeamCT, ParallelBeamCT
from invprior.operators.denoising import Denoising
from invprior.operators.inpainting import Inpainting

__all__ = ["Denoising", "Inpainting", "GaussianCS", "SubsampledDCT", "ParallelBeamCT", "FanBeamCT", "CTGeometry"]
