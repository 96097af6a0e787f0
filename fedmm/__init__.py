"""fedmm: a federated multimodal learning simulator built on Flower, PyTorch and Ray."""

__version__ = "0.1.0"
