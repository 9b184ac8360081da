-- imgraph state, schema 5: revocation, what each version was built from, and removal.
-- Applied once, inside one transaction, when PRAGMA user_version < 5, with foreign keys
-- off (SQLite's table-rebuild procedure; the migration checks them before committing).
-- Never edit this file after a release: add 0006_*.sql instead.
--
-- SQLite cannot change a CHECK constraint in place: the images table is rebuilt with
-- `Revoked` among its statuses and these columns:
--   origin        `IMAGE@VERSION` of the image version this one was built from (NULL when
--                 built from a source, or recorded before this schema);
--   revoked_reason, revoked_at   why and when it was revoked;
--   revoked_via   for a version revoked because its origin was, the `IMAGE@VERSION`
--                 whose revocation reached it (NULL when revoked itself);
--   status_before the status `imgraph revoke --undo` restores;
--   removed_at    when `imgraph gc` removed its artifact (retention); the row stays, so
--                 its version number is never given again.
CREATE TABLE images_new (
    image          TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    artifact_id    TEXT    NOT NULL,
    provider       TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('Candidate', 'Ready', 'Failed', 'Revoked')),
    built_at       INTEGER NOT NULL,
    run_id         INTEGER REFERENCES runs (id),
    origin         TEXT,
    revoked_reason TEXT,
    revoked_at     INTEGER,
    revoked_via    TEXT,
    status_before  TEXT    CHECK (status_before IN ('Candidate', 'Ready', 'Failed')),
    removed_at     INTEGER,
    PRIMARY KEY (image, version)
);
INSERT INTO images_new (image, version, artifact_id, provider, key, status, built_at, run_id)
    SELECT image, version, artifact_id, provider, key, status, built_at, run_id FROM images;
DROP TABLE images;
ALTER TABLE images_new RENAME TO images;
CREATE INDEX images_artifact ON images (artifact_id);
CREATE INDEX images_key ON images (image, key, built_at);
CREATE INDEX images_origin ON images (origin) WHERE origin IS NOT NULL;

CREATE TRIGGER images_insert_serial AFTER INSERT ON images
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER images_update_serial AFTER UPDATE ON images
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;

CREATE TRIGGER images_delete_serial AFTER DELETE ON images
BEGIN UPDATE lineage SET serial = serial + 1 WHERE id = 1; END;
