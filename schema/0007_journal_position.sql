-- imgraph state, schema 7: where this file stands in a shared journal of records.
-- Applied once, inside one transaction, when PRAGMA user_version < 7.
-- Never edit this file after a release: add 0008_*.sql instead.
--
-- A state file attached to a journal (shared state for teams) is a mirror of it: the
-- history tables hold exactly the journal's records up to `seq`, applied in order. A file
-- without a journal (the default) never has a row here.
CREATE TABLE journal_position (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    -- The journal's name, e.g. `s3://bucket/prefix/`: a file mirrors one journal only.
    journal TEXT    NOT NULL,
    -- The number of appends applied (0: none).
    seq     INTEGER NOT NULL CHECK (seq >= 0)
);
