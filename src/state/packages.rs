//! The packages inside each image version (`package_lists`, `packages`): written with
//! the version's registry row, in one transaction, and read by `imgraph packages`,
//! `diff` and `sbom`.

use rusqlite::{params, OptionalExtension};

use super::record::Record;
use super::{now_ms, Durable, ImageVersion, State, StateError};
use crate::packages::{Inventory, Manager, OsRelease, Package};

impl State {
    /// Records a built version together with what is inside it, in one transaction, so
    /// a version never exists without the package list its build read. `None` means the
    /// provider could not look inside (the version gets no package list).
    ///
    /// [`Durable::sync`] it before the version is used: a version number is never issued
    /// twice, whatever happens next, power loss included. The sync is the caller's, made
    /// after it let go of the state, so other nodes' records never wait behind it.
    pub fn record_built_image(
        &self,
        rec: &ImageVersion,
        inventory: Option<&Inventory>,
    ) -> Result<Durable<()>, StateError> {
        let context = format!("record image {} {}", rec.image, rec.version);
        self.record(&context, || {
            let mut records = vec![Record::VersionCreated {
                version: rec.clone(),
            }];
            if let Some(inv) = inventory {
                records.push(Record::PackagesStored {
                    image: rec.image.clone(),
                    version: rec.version.clone(),
                    inventory: inv.clone(),
                    at: now_ms(),
                });
            }
            Ok((records, ()))
        })?;
        Ok(self.unsynced(()))
    }

    pub(super) fn insert_packages(
        &self,
        image: &str,
        version: &str,
        inv: &Inventory,
        at: i64,
    ) -> Result<(), StateError> {
        let context = format!("record the packages of image {image} {version}");
        let context = context.as_str();
        let managers: Vec<&str> = inv.managers.iter().map(|m| m.as_str()).collect();
        self.conn
            .execute(
                "INSERT INTO package_lists
                   (image, version, managers, os_id, os_version, os_name, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    image,
                    version,
                    managers.join(" "),
                    inv.os.id,
                    inv.os.version_id,
                    inv.os.pretty_name,
                    at
                ],
            )
            .map_err(|e| self.sql_err(e, context))?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT OR REPLACE INTO packages
                   (image, version, manager, name, pkg_version, arch, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(|e| self.sql_err(e, context))?;
        for p in &inv.packages {
            stmt.execute(params![
                image,
                version,
                p.manager.as_str(),
                p.name,
                p.version,
                p.arch,
                p.source
            ])
            .map_err(|e| self.sql_err(e, context))?;
        }
        Ok(())
    }

    /// What is inside `image` `version`; `None` when no package list was recorded.
    pub fn packages_of(&self, image: &str, version: &str) -> Result<Option<Inventory>, StateError> {
        let context = format!("read the packages of image {image} {version}");
        let tx = self.read_tx(&context)?;
        let head = self
            .conn
            .query_row(
                "SELECT managers, os_id, os_version, os_name FROM package_lists
                 WHERE image = ?1 AND version = ?2",
                [image, version],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        OsRelease {
                            id: row.get(1)?,
                            version_id: row.get(2)?,
                            pretty_name: row.get(3)?,
                        },
                    ))
                },
            )
            .optional()
            .map_err(|e| self.sql_err(e, &*context))?;
        let Some((managers, os)) = head else {
            return Ok(None);
        };
        let corrupt = |what: &str| StateError::Corrupt {
            path: self.path.clone(),
            detail: format!("unknown package manager `{what}` recorded for {image} {version}"),
        };
        let managers = managers
            .split_whitespace()
            .map(|m| Manager::parse(m).ok_or_else(|| corrupt(m)))
            .collect::<Result<Vec<_>, _>>()?;
        let rows: Vec<(String, String, String, String, Option<String>)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT manager, name, pkg_version, arch, source FROM packages
                     WHERE image = ?1 AND version = ?2 ORDER BY manager, name, arch",
                )
                .map_err(|e| self.sql_err(e, &*context))?;
            let rows = stmt
                .query_map([image, version], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })
                .map_err(|e| self.sql_err(e, &*context))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| self.sql_err(e, &*context))?
        };
        tx.commit().map_err(|e| self.sql_err(e, &*context))?;
        let mut packages = Vec::with_capacity(rows.len());
        for (manager, name, version, arch, source) in rows {
            packages.push(Package {
                manager: Manager::parse(&manager).ok_or_else(|| corrupt(&manager))?,
                name,
                version,
                arch,
                source,
            });
        }
        let mut inv = Inventory {
            managers,
            os,
            packages,
        };
        inv.sort();
        Ok(Some(inv))
    }
}
