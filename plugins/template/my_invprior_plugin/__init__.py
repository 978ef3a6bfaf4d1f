"""A template invprior plugin: one forward operator and one regularizer."""

from my_invprior_plugin.components import ColumnSums, SquaredNorm

#: The invprior plugin API this package is written against (``invprior.registry.PLUGIN_API``).
INVPRIOR_API = "1.0"

__all__ = ["INVPRIOR_API", "ColumnSums", "SquaredNorm"]
