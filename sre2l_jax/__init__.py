"""SRe²L (Squeeze, Recover and Relabel) dataset condensation in JAX."""

__version__ = "0.1.0"
