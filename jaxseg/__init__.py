"""jaxseg: medical image segmentation in JAX/Flax, built for training throughput."""

__version__ = "0.1.0"
