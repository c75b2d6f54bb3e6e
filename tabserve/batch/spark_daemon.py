"""Spark's Python daemon (pyspark.daemon), with torch, numpy and pyarrow imported before it
forks the Python workers: each worker then starts with them loaded, instead of every worker
importing torch on its own (about 2 s of CPU each on a small machine). `tabserve score --engine
spark` names it in spark.python.daemon.module when its master is local (where this Python, with
tabserve installed, runs the workers); on a cluster the executors keep Spark's own daemon.
"""

import numpy  # noqa: F401
import pyarrow  # noqa: F401
import pyarrow.compute  # noqa: F401
import torch  # noqa: F401
from pyspark import daemon

if __name__ == "__main__":
    daemon.manager()
