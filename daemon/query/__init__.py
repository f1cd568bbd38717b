"""Reading the tables: the DuckDB layer over the snapshot's files, the query API, the read
models (runs, audit trails, accuracy), export."""
