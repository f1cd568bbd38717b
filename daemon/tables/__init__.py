"""Writing what is read: the read-model writer and its disk thread (rows, audit trails,
checkpoint, status), the store of the tables, compaction, retention, the run index."""
