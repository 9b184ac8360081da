-- imgraph state, schema 4: a lineage and a serial, as Terraform keeps them.
-- Applied once, inside one transaction, when PRAGMA user_version < 4.
-- Never edit this file after a release: add 0005_*.sql instead.
--
-- The lineage names this state file for its whole life (a copy keeps it; a new file gets
-- a new one). The serial grows with every write to what a plan is decided from: runs,
-- node runs, the image registry and deliveries. A saved plan records both and
-- `imgraph apply FILE` refuses to run when they moved. The stat cache, the ledger and
-- the lease are bookkeeping and leave the serial alone.
CREATE TABLE lineage (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    lineage TEXT    NOT NULL,
    serial  INTEGER NOT NULL
);
INSERT INTO lineage (id, lineage, serial) VALUES (1, lower(hex(randomblob(16))), 0);

CREATE TRIGGER runs_insert_serial AFTER INSERT ON runs
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER runs_update_serial AFTER UPDATE ON runs
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER runs_delete_serial AFTER DELETE ON runs
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER node_runs_insert_serial AFTER INSERT ON node_runs
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER node_runs_update_serial AFTER UPDATE ON node_runs
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER node_runs_delete_serial AFTER DELETE ON node_runs
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER images_insert_serial AFTER INSERT ON images
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER images_update_serial AFTER UPDATE ON images
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER images_delete_serial AFTER DELETE ON images
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER deliveries_insert_serial AFTER INSERT ON deliveries
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER deliveries_update_serial AFTER UPDATE ON deliveries
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER deliveries_delete_serial AFTER DELETE ON deliveries
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;
