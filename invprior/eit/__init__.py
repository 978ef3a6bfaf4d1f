"""Electrical impedance tomography: meshes, the complete electrode model, adjoint derivatives and
the ``eit`` operator (extra ``eit`` for the mesh generator)."""

from invprior.eit.autograd import eit_voltages
from invprior.eit.mesh import Mesh, disc_mesh, electrode_arcs, polygon_mesh
from invprior.eit.model import EITModel
from invprior.eit.operator import EIT, PixelToMesh

__all__ = ["EIT", "EITModel", "Mesh", "PixelToMesh", "disc_mesh", "eit_voltages", "electrode_arcs", "polygon_mesh"]
