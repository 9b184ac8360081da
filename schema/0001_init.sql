-- imgraph state, schema 1.
-- Applied once, inside one transaction, when PRAGMA user_version < 1.
-- Never edit this file after a release: add 0002_*.sql instead.
-- Timestamps are milliseconds since the Unix epoch unless the column name ends in _ns.

-- One invocation that records work (apply, gc, ...).
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    command      TEXT    NOT NULL,
    options_json TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'abandoned')),
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    pid          INTEGER NOT NULL,
    -- boot id and start time of the process, so a reused pid is not mistaken for the
    -- process that wrote the row (NULL where the platform cannot tell).
    proc_start   TEXT
);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';

-- One stage node within a run, or a record that it did not run (attempted = 0).
CREATE TABLE node_runs (
    id            INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL REFERENCES runs (id),
    node_id       TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    manifest_json TEXT    NOT NULL,
    stanza        TEXT    NOT NULL,
    upstream_json TEXT    NOT NULL,
    reasons_json  TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'cancelled', 'abandoned')),
    attempted     INTEGER NOT NULL CHECK (attempted IN (0, 1)),
    outputs_json  TEXT,
    error         TEXT,
    log_path      TEXT,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER
);
CREATE INDEX node_runs_node ON node_runs (node_id, id);
CREATE INDEX node_runs_success ON node_runs (node_id, id) WHERE status = 'succeeded';
CREATE INDEX node_runs_attempt ON node_runs (node_id, id) WHERE attempted = 1;
CREATE INDEX node_runs_run ON node_runs (run_id, id);

-- The image registry: every successful build gets a row with its version.
CREATE TABLE images (
    image       TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    artifact_id TEXT    NOT NULL,
    provider    TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('Candidate', 'Ready', 'Failed')),
    built_at    INTEGER NOT NULL,
    run_id      INTEGER REFERENCES runs (id),
    PRIMARY KEY (image, version)
);
CREATE INDEX images_artifact ON images (artifact_id);
CREATE INDEX images_key ON images (image, key, built_at);

-- Which version went to which environment, in delivery order.
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    image        TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    run_id       INTEGER NOT NULL REFERENCES runs (id),
    delivered_at INTEGER NOT NULL,
    FOREIGN KEY (image, version) REFERENCES images (image, version)
);
CREATE INDEX deliveries_target ON deliveries (image, environment, id);
CREATE INDEX deliveries_version ON deliveries (image, version);

-- Stat cache for input files, keyed by project-relative path. Nanosecond times are
-- decimal text because they do not all fit in 64 bits.
CREATE TABLE stat_cache (
    path           TEXT    PRIMARY KEY,
    size           INTEGER NOT NULL,
    mtime_ns       TEXT    NOT NULL,
    ctime_ns       TEXT    NOT NULL,
    inode          INTEGER NOT NULL,
    mode           INTEGER NOT NULL,
    digest         TEXT    NOT NULL,
    recorded_at_ns TEXT    NOT NULL
) WITHOUT ROWID;

-- Temporary resources, written before they are created and marked when destroyed.
CREATE TABLE ledger (
    id           INTEGER PRIMARY KEY,
    run_id       INTEGER REFERENCES runs (id),
    node_id      TEXT    NOT NULL,
    provider     TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    resource     TEXT    NOT NULL,
    purpose      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    destroyed_at INTEGER
);
CREATE INDEX ledger_open ON ledger (id) WHERE destroyed_at IS NULL;

-- The apply lease: at most one row.
CREATE TABLE lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    pid        INTEGER NOT NULL,
    proc_start TEXT,
    holder     TEXT    NOT NULL,
    since      INTEGER NOT NULL
);
