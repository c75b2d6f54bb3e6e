"""The batch path: reader -> engine -> writer, connected by the pipeline.

    readers.py     CSV (plain, .gz, stdin) and Parquet in, as batches of records
    engines/       torchserve, local, spark: a batch's CSV body -> Results (one module each)
    results.py     a batch's results as arrays; the one function that reads a handler's answer
    writers.py     CSV and Parquet out, text and columns produced once by pyarrow
    pipeline.py    order, concurrency, containment (splitting), --max-errors, progress
    checkpoint.py  checkpoints and --resume
    spark_tasks.py what Spark's executors run for --engine spark (shipped with results.py)
    spark_daemon.py Spark's Python daemon with torch imported once (local sessions)

tabserve.scorer assembles a job from them.
"""
