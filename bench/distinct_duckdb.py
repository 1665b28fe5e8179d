"""One run of `bench distinct` on DuckDB (Python):

    python distinct_duckdb.py EVENTS_DIR THREADS SQL OUT_FILE

writes the query's result as Parquet to OUT_FILE and prints the seconds of the
`COPY` alone (interpreter start and `import duckdb` untimed).
"""

import sys
import time

import duckdb

events, threads, sql, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{events}/*.parquet')")
start = time.perf_counter()
con.execute(f"COPY ({sql}) TO '{out}' (FORMAT PARQUET)")
print(time.perf_counter() - start)
