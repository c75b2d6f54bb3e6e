"""tabserve: from a table of numbers to a classifier served by TorchServe."""

__version__ = "0.1.0"
