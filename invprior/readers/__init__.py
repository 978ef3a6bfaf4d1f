"""Readers: measured data files -> ``InverseProblem`` (registry group ``invprior.readers``)."""

from invprior.readers.files import ArrayFile
from invprior.readers.reference import read_reference

__all__ = ["ArrayFile", "read_reference"]
