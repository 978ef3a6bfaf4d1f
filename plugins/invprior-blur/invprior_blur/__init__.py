"""invprior-blur: deblurring and super-resolution operators for invprior, registered as ``blur``
and ``super_resolution`` in the ``invprior.operators`` entry-point group."""

from invprior_blur.kernels import gaussian_kernel, motion_kernel
from invprior_blur.operators import Blur, SuperResolution

#: The invprior plugin API this package is written against (see ``invprior.registry``).
INVPRIOR_API = "1.0"

__all__ = ["INVPRIOR_API", "Blur", "SuperResolution", "gaussian_kernel", "motion_kernel"]
