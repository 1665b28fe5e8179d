"""Runs TPC-H queries for `bench tpch` on DuckDB or Spark, one persistent process per
engine, so JVM and interpreter start-up are not timed.

    python engines.py {duckdb|spark} DATA_DIR THREADS

Reads one JSON request per stdin line, {"sql": ..., "out": DIR}, writes the result as
Parquet into DIR and answers on stdout with a line "@@ {"secs": S}" or
"@@ {"error": MESSAGE}". Lines without the "@@ " prefix are engine noise.
"""

import json
import os
import sys
import time
import traceback

TABLES = ["lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region"]


def reply(obj):
    sys.stdout.write("@@ " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def duckdb_engine(data, threads):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    for t in TABLES:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data}/{t}/*.parquet')")

    def run(sql, out):
        os.makedirs(out, exist_ok=True)
        con.execute(f"COPY ({sql}) TO '{out}/part-0.parquet' (FORMAT PARQUET)")

    return run, duckdb.__version__


def spark_engine(data, threads):
    from pyspark.sql import SparkSession
    import pyspark

    spark = (
        SparkSession.builder.master(f"local[{threads}]")
        .appName("autopipe-bench")
        .config("spark.driver.memory", "6g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    for t in TABLES:
        spark.read.parquet(f"{data}/{t}").createOrReplaceTempView(t)

    def run(sql, out):
        spark.sql(sql).write.mode("overwrite").parquet(out)

    return run, pyspark.__version__


def main():
    engine, data, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        run, version = {"duckdb": duckdb_engine, "spark": spark_engine}[engine](data, threads)
    except Exception as e:  # reported to the bench, which skips the engine
        reply({"error": f"{engine} did not start: {e!r}"})
        return
    reply({"ready": version})
    for line in sys.stdin:
        req = json.loads(line)
        try:
            start = time.perf_counter()
            run(req["sql"], req["out"])
            reply({"secs": time.perf_counter() - start})
        except Exception as e:
            reply({"error": f"{e}\n{traceback.format_exc(limit=3)}"})


if __name__ == "__main__":
    main()
