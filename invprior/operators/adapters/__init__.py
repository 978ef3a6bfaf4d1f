"""Adapters: deepinv, pylops and ODL operators as ForwardOperators, and back."""
