//! apk's installed database (`lib/apk/db/installed`): one record per package, lines of
//! `X:value`, records separated by blank lines (see apk-tools' `apk_database.c`).

use super::{Manager, Package, ParseError};

fn error(detail: String) -> ParseError {
    ParseError {
        manager: "apk",
        path: "lib/apk/db/installed",
        detail,
    }
}

/// The packages of an installed database.
pub(super) fn parse_installed(bytes: &[u8]) -> Result<Vec<Package>, ParseError> {
    let text = String::from_utf8_lossy(bytes);
    let mut packages = Vec::new();
    let (mut name, mut version, mut arch, mut origin): (
        Option<&str>,
        Option<&str>,
        Option<&str>,
        Option<&str>,
    ) = (None, None, None, None);
    let mut first_line = 1;
    for (index, line) in text.lines().chain(std::iter::once("")).enumerate() {
        if line.is_empty() {
            if let Some(name) = name.take() {
                let version = version.take().ok_or_else(|| {
                    error(format!(
                        "package `{name}` (record at line {first_line}) has no `V:` line"
                    ))
                })?;
                packages.push(Package {
                    manager: Manager::Apk,
                    name: name.to_string(),
                    version: version.to_string(),
                    arch: arch.take().unwrap_or_default().to_string(),
                    source: origin.take().filter(|o| *o != name).map(str::to_string),
                });
            } else if version.is_some() {
                return Err(error(format!(
                    "the record at line {first_line} has no `P:` line"
                )));
            }
            (version, arch, origin) = (None, None, None);
            first_line = index + 2;
            continue;
        }
        // Every line is `X:value`; files (`F:`, `R:`) and checksums are not needed here.
        match line.split_once(':') {
            Some(("P", v)) => name = Some(v),
            Some(("V", v)) => version = Some(v),
            Some(("A", v)) => arch = Some(v),
            Some(("o", v)) => origin = Some(v),
            _ => {}
        }
    }
    Ok(packages)
}
