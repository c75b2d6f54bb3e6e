"""tabserve: from a real table to a model served by TorchServe, online and in batch."""

__version__ = "0.1.0"
