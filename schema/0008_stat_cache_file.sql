-- The stat cache moved to a binary file beside the state file (`state.db-statcache`, see
-- src/state/stat_cache.rs): reading its rows here was 30 % of a no-change plan of a
-- 20,000-file tree. Nothing reads this table any more.
DROP TABLE stat_cache;
