-- imgraph state, schema 3: the lease names the host of its holder, so `imgraph lock
-- status` can say where the holder runs and liveness is only judged on that host.
-- NULL in rows written by schema 1 (treated as this host, as schema 1 did).
ALTER TABLE lease ADD COLUMN host TEXT;
