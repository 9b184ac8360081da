-- What is inside each image version: its package database as read after the build.
-- A version with a row here had its databases read (`managers` is empty when the image
-- has none that imgraph reads); a version without one was never read (built before this
-- table existed, or by a provider that cannot look inside its images).
CREATE TABLE package_lists (
    image       TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    managers    TEXT    NOT NULL,
    os_id       TEXT,
    os_version  TEXT,
    os_name     TEXT,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (image, version),
    FOREIGN KEY (image, version) REFERENCES images (image, version) ON DELETE CASCADE
);

CREATE TABLE packages (
    image       TEXT NOT NULL,
    version     TEXT NOT NULL,
    manager     TEXT NOT NULL CHECK (manager IN ('dpkg', 'apk')),
    name        TEXT NOT NULL,
    pkg_version TEXT NOT NULL,
    arch        TEXT NOT NULL,
    source      TEXT,
    PRIMARY KEY (image, version, manager, name, arch),
    FOREIGN KEY (image, version) REFERENCES package_lists (image, version) ON DELETE CASCADE
) WITHOUT ROWID;
