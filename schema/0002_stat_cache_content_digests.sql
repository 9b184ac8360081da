-- File digests no longer include the executable bit: the whole mode is hashed beside the
-- content, in manifest entries. Cached digests in the old encoding must not be reused.
DELETE FROM stat_cache;
