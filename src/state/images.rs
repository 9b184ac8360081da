//! The image registry: every successful build's version, artifact id, key and release
//! status, and which version went to which environment.
//!
//! Versions are `SERIES.PATCH` strings; ordering compares dot-separated parts as numbers
//! (so 1.4.10 sorts after 1.4.9), which is done in Rust rather than SQL to keep the
//! queries plain.

use std::cmp::Ordering;
use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Row};

use serde::{Deserialize, Serialize};

use super::record::Record;
use super::{now_ms, ReleaseStatus, RunId, State, StateError};

/// An image version's registry row: what is written when it is built, its status and
/// revocation changing later. [`Record::VersionCreated`] carries it as it is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageVersion {
    pub image: String,
    pub version: String,
    pub artifact_id: String,
    pub provider: String,
    pub key: String,
    pub status: ReleaseStatus,
    pub built_at: i64,
    /// The run that built it (or recovered it into the state).
    pub run: Option<RunId>,
    /// `IMAGE@VERSION` this version was built from, when built from another image (and
    /// recorded since schema 5).
    pub origin: Option<String>,
    /// Why it was revoked, when it is.
    pub revoked_reason: Option<String>,
}

/// A version as the registry reads it back: its row, and where it went.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub version: ImageVersion,
    /// Environments this version was delivered to, in first-delivery order.
    pub environments: Vec<String>,
    /// Environments whose latest delivery of this image is this version: what they hold
    /// now. Filled by [`State::images`] only.
    pub holding: Vec<String>,
}

const IMAGE_COLS: &str =
    "image, version, artifact_id, provider, key, status, built_at, run_id, origin, revoked_reason";

fn image_from_row(row: &Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        version: ImageVersion {
            image: row.get(0)?,
            version: row.get(1)?,
            artifact_id: row.get(2)?,
            provider: row.get(3)?,
            key: row.get(4)?,
            status: row.get(5)?,
            built_at: row.get(6)?,
            run: row.get(7)?,
            origin: row.get(8)?,
            revoked_reason: row.get(9)?,
        },
        environments: Vec::new(),
        holding: Vec::new(),
    })
}

/// Compares versions part by part, numerically where both parts are numbers.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

fn is_constraint(err: &rusqlite::Error, extended: std::ffi::c_int) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.extended_code == extended)
}

impl State {
    /// The version the next build of `image` in `series` gets: `SERIES.0` when the series
    /// has none yet, else the highest patch recorded for that image and series (whatever
    /// its status, so a failed version's number is never reused) plus one.
    pub fn next_version(&self, image: &str, series: &str) -> Result<String, StateError> {
        let invalid = |detail: &str| StateError::InvalidSeries {
            image: image.to_owned(),
            series: series.to_owned(),
            detail: detail.to_owned(),
        };
        if series.is_empty() || series.split('.').any(|p| p.parse::<u64>().is_err()) {
            return Err(invalid(&format!(
                "version series `{series}` is not dot-separated numbers such as \"1.4\""
            )));
        }
        let prefix = format!("{series}.");
        let context = format!("number the next version of image {image}");
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT version FROM images WHERE image = ?1 AND substr(version, 1, ?2) = ?3",
            )
            .map_err(|e| self.sql_err(e, &*context))?;
        let versions = stmt
            .query_map(
                params![image, prefix.chars().count() as i64, prefix],
                |row| row.get::<_, String>(0),
            )
            .map_err(|e| self.sql_err(e, &*context))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e, &*context))?;
        // Only `SERIES.N` counts: with series 1.4, "1.4.2.1" is not a patch of it.
        let highest = versions
            .iter()
            .filter_map(|v| v.strip_prefix(&prefix)?.parse::<u64>().ok())
            .max();
        let next = match highest {
            None => 0,
            Some(n) => n
                .checked_add(1)
                .ok_or_else(|| invalid("the patch number would overflow"))?,
        };
        Ok(format!("{series}.{next}"))
    }

    /// Records a built version. `(image, version)` is unique: recording it twice is an
    /// error ([`StateError::VersionExists`]). Synced before it returns.
    pub fn record_image(&self, rec: &ImageVersion) -> Result<(), StateError> {
        self.record_built_image(rec, None)?.sync()
    }

    pub(super) fn insert_image(&self, rec: &ImageVersion) -> Result<(), StateError> {
        self.conn
            .execute(
                &format!(
                    "INSERT INTO images ({IMAGE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ),
                params![
                    rec.image,
                    rec.version,
                    rec.artifact_id,
                    rec.provider,
                    rec.key,
                    rec.status,
                    rec.built_at,
                    rec.run,
                    rec.origin,
                    rec.revoked_reason
                ],
            )
            .map_err(|e| {
                if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) {
                    StateError::VersionExists {
                        path: self.path.clone(),
                        image: rec.image.clone(),
                        version: rec.version.clone(),
                    }
                } else {
                    self.sql_err(e, format!("record image {} {}", rec.image, rec.version))
                }
            })?;
        Ok(())
    }

    pub fn set_image_status(
        &self,
        image: &str,
        version: &str,
        status: ReleaseStatus,
    ) -> Result<(), StateError> {
        let record = Record::StatusSet {
            image: image.to_owned(),
            version: version.to_owned(),
            status,
        };
        self.record(
            &format!("mark image {image} {version} {}", status.as_str()),
            || Ok((vec![record], ())),
        )
    }

    pub(super) fn update_image_status(
        &self,
        image: &str,
        version: &str,
        status: ReleaseStatus,
    ) -> Result<(), StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE images SET status = ?1 WHERE image = ?2 AND version = ?3",
                params![status, image, version],
            )
            .map_err(|e| {
                self.sql_err(
                    e,
                    format!("mark image {image} {version} {}", status.as_str()),
                )
            })?;
        if changed == 0 {
            return Err(self.not_found(format!("image {image} {version}")));
        }
        Ok(())
    }

    /// Revokes `image` `version` with `reason`, and every version built from a revoked
    /// one (recursively: a descendant's descendants too), in one transaction. Returns the
    /// versions revoked by this call, the named one first; one already revoked is not
    /// revoked again (its descendants still are, when they are not yet).
    pub fn revoke(
        &self,
        image: &str,
        version: &str,
        reason: &str,
    ) -> Result<Vec<ImageRecord>, StateError> {
        let context = format!("revoke image {image} {version}");
        let revoked = self.record(&context, || {
            let mut revoked = Vec::new();
            for (img, ver) in self.descendants(image, version, &context)? {
                let status: ReleaseStatus = self
                    .conn
                    .query_row(
                        "SELECT status FROM images WHERE image = ?1 AND version = ?2",
                        params![img, ver],
                        |row| row.get(0),
                    )
                    .map_err(|e| self.sql_err(e, &*context))?;
                if status != ReleaseStatus::Revoked {
                    revoked.push((img, ver));
                }
            }
            let record = Record::Revoked {
                image: image.to_owned(),
                version: version.to_owned(),
                reason: reason.to_owned(),
                at: now_ms(),
            };
            Ok((vec![record], revoked))
        })?;
        self.records_of(&revoked, &context)
    }

    /// `image` `version` and every version built from it, recursively, the named one
    /// first. Not found when the named one is not recorded.
    fn descendants(
        &self,
        image: &str,
        version: &str,
        context: &str,
    ) -> Result<Vec<(String, String)>, StateError> {
        let exists: bool = self
            .conn
            .query_row(
                "SELECT count(*) FROM images WHERE image = ?1 AND version = ?2",
                params![image, version],
                |row| row.get::<_, i64>(0),
            )
            .map_err(|e| self.sql_err(e, context))?
            > 0;
        if !exists {
            return Err(self.not_found(format!("image {image} {version}")));
        }
        let mut out: Vec<(String, String)> = Vec::new();
        let mut queue = vec![(image.to_string(), version.to_string())];
        while let Some((img, ver)) = queue.pop() {
            if out.iter().any(|(i, v)| *i == img && *v == ver) {
                continue;
            }
            let mut stmt = self
                .conn
                .prepare_cached("SELECT image, version FROM images WHERE origin = ?1")
                .map_err(|e| self.sql_err(e, context))?;
            let children = stmt
                .query_map([format!("{img}@{ver}")], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .map_err(|e| self.sql_err(e, context))?
                .collect::<Result<Vec<(String, String)>, _>>()
                .map_err(|e| self.sql_err(e, context))?;
            out.push((img, ver));
            queue.extend(children);
        }
        Ok(out)
    }

    /// Applies [`Record::Revoked`]: the version and its descendants that are not revoked
    /// yet become `Revoked`, the descendants naming the version they were revoked through.
    pub(super) fn apply_revocation(
        &self,
        image: &str,
        version: &str,
        reason: &str,
        at: i64,
    ) -> Result<(), StateError> {
        let context = format!("revoke image {image} {version}");
        let root = format!("{image}@{version}");
        for (img, ver) in self.descendants(image, version, &context)? {
            let via = (img != image || ver != version).then(|| root.clone());
            let why = match &via {
                None => reason.to_string(),
                Some(_) => format!("built from revoked {image} {version}: {reason}"),
            };
            self.conn
                .execute(
                    "UPDATE images SET status_before = status, status = 'Revoked',
                            revoked_reason = ?3, revoked_at = ?4, revoked_via = ?5
                     WHERE image = ?1 AND version = ?2 AND status != 'Revoked'",
                    params![img, ver, why, at, via],
                )
                .map_err(|e| self.sql_err(e, &*context))?;
        }
        Ok(())
    }

    /// Undoes [`State::revoke`] of `image` `version`: it and the versions revoked because
    /// of it get back the status they had. Returns them; an error when it was not
    /// revoked itself (a version revoked through its origin is restored from there).
    pub fn unrevoke(&self, image: &str, version: &str) -> Result<Vec<ImageRecord>, StateError> {
        let context = format!("undo the revocation of image {image} {version}");
        let root = format!("{image}@{version}");
        let restored = self.record(&context, || {
            let row: Option<(ReleaseStatus, Option<String>)> = self
                .conn
                .query_row(
                    "SELECT status, revoked_via FROM images WHERE image = ?1 AND version = ?2",
                    params![image, version],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(|e| self.sql_err(e, &*context))?;
            match row {
                None => return Err(self.not_found(format!("image {image} {version}"))),
                Some((status, _)) if status != ReleaseStatus::Revoked => {
                    return Err(StateError::NotRevoked {
                        image: image.into(),
                        version: version.into(),
                        detail: "it is not revoked".into(),
                    })
                }
                Some((_, Some(via))) => {
                    return Err(StateError::NotRevoked {
                        image: image.into(),
                        version: version.into(),
                        detail: format!(
                            "it was revoked because {} was: undo that one",
                            via.replace('@', " ")
                        ),
                    })
                }
                Some(_) => {}
            }
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT image, version FROM images
                     WHERE (image = ?1 AND version = ?2) OR revoked_via = ?3",
                )
                .map_err(|e| self.sql_err(e, &*context))?;
            let restored = stmt
                .query_map(params![image, version, root], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .map_err(|e| self.sql_err(e, &*context))?
                .collect::<Result<Vec<(String, String)>, _>>()
                .map_err(|e| self.sql_err(e, &*context))?;
            let record = Record::Unrevoked {
                image: image.to_owned(),
                version: version.to_owned(),
            };
            Ok((vec![record], restored))
        })?;
        self.records_of(&restored, &context)
    }

    /// Applies [`Record::Unrevoked`].
    pub(super) fn undo_revocation(&self, image: &str, version: &str) -> Result<(), StateError> {
        let root = format!("{image}@{version}");
        self.conn
            .execute(
                "UPDATE images SET status = coalesce(status_before, 'Ready'), status_before = NULL,
                        revoked_reason = NULL, revoked_at = NULL, revoked_via = NULL
                 WHERE (image = ?1 AND version = ?2) OR revoked_via = ?3",
                params![image, version, root],
            )
            .map_err(|e| {
                self.sql_err(e, format!("undo the revocation of image {image} {version}"))
            })?;
        Ok(())
    }

    /// Records that `imgraph gc` removed the artifact of `image` `version`: the version
    /// is no longer listed (its row stays, so its number is never given again).
    pub fn mark_removed(&self, image: &str, version: &str) -> Result<(), StateError> {
        let record = Record::VersionRemoved {
            image: image.to_owned(),
            version: version.to_owned(),
            at: now_ms(),
        };
        self.record(
            &format!("record the removal of image {image} {version}"),
            || Ok((vec![record], ())),
        )
    }

    pub(super) fn update_removed(
        &self,
        image: &str,
        version: &str,
        at: i64,
    ) -> Result<(), StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE images SET removed_at = ?3 WHERE image = ?1 AND version = ?2",
                params![image, version, at],
            )
            .map_err(|e| {
                self.sql_err(e, format!("record the removal of image {image} {version}"))
            })?;
        if changed == 0 {
            return Err(self.not_found(format!("image {image} {version}")));
        }
        Ok(())
    }

    /// Whether the version was revoked through its origin (not itself).
    pub fn revoked_via(&self, image: &str, version: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT revoked_via FROM images WHERE image = ?1 AND version = ?2",
                params![image, version],
                |row| row.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.sql_err(e, format!("read the revocation of image {image} {version}")))
    }

    fn records_of(
        &self,
        ids: &[(String, String)],
        context: &str,
    ) -> Result<Vec<ImageRecord>, StateError> {
        let mut out = Vec::new();
        for (image, version) in ids {
            let rec = self
                .conn
                .query_row(
                    &format!("SELECT {IMAGE_COLS} FROM images WHERE image = ?1 AND version = ?2"),
                    params![image, version],
                    image_from_row,
                )
                .map_err(|e| self.sql_err(e, context))?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Every recorded version (of one image, or of all), by image name, then newest
    /// version first.
    pub fn images(&self, image: Option<&str>) -> Result<Vec<ImageRecord>, StateError> {
        let context = "list images";
        let tx = self.read_tx(context)?;
        let mut records = {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {IMAGE_COLS} FROM images
                     WHERE (?1 IS NULL OR image = ?1) AND removed_at IS NULL"
                ))
                .map_err(|e| self.sql_err(e, context))?;
            let rows = stmt
                .query_map([image], image_from_row)
                .map_err(|e| self.sql_err(e, context))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.sql_err(e, context))?
        };
        // One pass over the deliveries, oldest first, gives both what each version went
        // to (first-delivery order) and what each environment holds now (its latest
        // delivery of the image).
        let mut delivered: HashMap<(String, String), Vec<String>> = HashMap::new();
        let mut latest: HashMap<(String, String), (i64, String)> = HashMap::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT id, image, version, environment FROM deliveries
                     WHERE ?1 IS NULL OR image = ?1 ORDER BY id",
                )
                .map_err(|e| self.sql_err(e, context))?;
            let rows = stmt
                .query_map([image], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .map_err(|e| self.sql_err(e, context))?;
            for row in rows {
                let (id, image, version, env) = row.map_err(|e| self.sql_err(e, context))?;
                let envs = delivered
                    .entry((image.clone(), version.clone()))
                    .or_default();
                if !envs.contains(&env) {
                    envs.push(env.clone());
                }
                latest.insert((image, env), (id, version));
            }
        }
        let mut held: Vec<(i64, String, String, String)> = latest
            .into_iter()
            .map(|((image, env), (id, version))| (id, image, version, env))
            .collect();
        held.sort();
        let mut holding: HashMap<(String, String), Vec<String>> = HashMap::new();
        for (_, image, version, env) in held {
            holding.entry((image, version)).or_default().push(env);
        }
        tx.commit().map_err(|e| self.sql_err(e, context))?;
        for rec in &mut records {
            let id = (rec.version.image.clone(), rec.version.version.clone());
            if let Some(envs) = delivered.remove(&id) {
                rec.environments = envs;
            }
            if let Some(envs) = holding.remove(&id) {
                rec.holding = envs;
            }
        }
        records.sort_by(|a, b| {
            a.version
                .image
                .cmp(&b.version.image)
                .then_with(|| compare_versions(&b.version.version, &a.version.version))
        });
        Ok(records)
    }

    /// The newest version whose provider artifact is `artifact_id` (a content-addressed
    /// store can give two versions the same artifact).
    pub fn image_by_artifact(&self, artifact_id: &str) -> Result<Option<ImageRecord>, StateError> {
        self.newest_image(
            "artifact_id = ?1",
            params![artifact_id],
            &format!("find the image of artifact {artifact_id}"),
        )
    }

    /// The newest version of `image` built with `key`.
    pub fn image_by_key(&self, image: &str, key: &str) -> Result<Option<ImageRecord>, StateError> {
        self.newest_image(
            "image = ?1 AND key = ?2",
            params![image, key],
            &format!("find image {image} with key {key}"),
        )
    }

    fn newest_image(
        &self,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
        context: &str,
    ) -> Result<Option<ImageRecord>, StateError> {
        let tx = self.read_tx(context)?;
        let found = self
            .conn
            .query_row(
                &format!(
                    "SELECT {IMAGE_COLS} FROM images WHERE ({filter}) AND removed_at IS NULL
                     ORDER BY built_at DESC, rowid DESC LIMIT 1"
                ),
                params,
                image_from_row,
            )
            .optional()
            .map_err(|e| self.sql_err(e, context))?;
        let Some(mut rec) = found else {
            return Ok(None);
        };
        rec.environments =
            self.environments_of(&rec.version.image, &rec.version.version, context)?;
        tx.commit().map_err(|e| self.sql_err(e, context))?;
        Ok(Some(rec))
    }

    fn environments_of(
        &self,
        image: &str,
        version: &str,
        context: &str,
    ) -> Result<Vec<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT environment FROM deliveries WHERE image = ?1 AND version = ?2
                 GROUP BY environment ORDER BY min(id)",
            )
            .map_err(|e| self.sql_err(e, context))?;
        let rows = stmt
            .query_map([image, version], |row| row.get(0))
            .map_err(|e| self.sql_err(e, context))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.sql_err(e, context))
    }

    /// Records that `image` `version` was delivered to `environment` by `run`. The
    /// version must be recorded.
    pub fn record_delivery(
        &self,
        image: &str,
        version: &str,
        environment: &str,
        run: RunId,
    ) -> Result<(), StateError> {
        let context = format!("record the delivery of image {image} {version} to {environment}");
        self.record(&context, || {
            let record = Record::Delivered {
                delivery: self.next_id("deliveries")?,
                image: image.to_owned(),
                version: version.to_owned(),
                environment: environment.to_owned(),
                run,
                at: now_ms(),
            };
            Ok((vec![record], ()))
        })
    }

    pub(super) fn insert_delivery(
        &self,
        id: i64,
        image: &str,
        version: &str,
        environment: &str,
        run: RunId,
        at: i64,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO deliveries (id, image, version, environment, run_id, delivered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, image, version, environment, run, at],
            )
            .map_err(|e| {
                if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY) {
                    self.not_found(format!("image {image} {version} or run {run}"))
                } else {
                    self.sql_err(
                        e,
                        format!("record the delivery of image {image} {version} to {environment}"),
                    )
                }
            })?;
        Ok(())
    }

    /// The version most recently delivered to `environment`.
    pub fn delivered_version(
        &self,
        image: &str,
        environment: &str,
    ) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT version FROM deliveries WHERE image = ?1 AND environment = ?2
                 ORDER BY id DESC LIMIT 1",
                [image, environment],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| {
                self.sql_err(
                    e,
                    format!("find the version of image {image} delivered to {environment}"),
                )
            })
    }
}

impl State {
    /// The version an image stands for now: its newest `Ready` version, else its newest
    /// version whatever its status; `None` before its first build.
    pub fn current_version(&self, image: &str) -> Result<Option<ImageRecord>, StateError> {
        // `images` lists newest version first.
        let records = self.images(Some(image))?;
        let ready = records
            .iter()
            .position(|r| r.version.status == ReleaseStatus::Ready);
        Ok(match ready {
            Some(i) => records.into_iter().nth(i),
            None => records.into_iter().next(),
        })
    }
}
