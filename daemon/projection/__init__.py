"""The pure fold: the event models (msgspec structs, validated in one native pass), each
table's row defined once, and `Projector.apply(event, lsn)` over typed run state. No I/O,
no other room but base."""
