//! dpkg's status file (`var/lib/dpkg/status`, deb822 paragraphs; see dpkg(1) and
//! deb-control(5)).

use super::{Manager, Package, ParseError, DPKG_STATUS};

fn error(detail: String) -> ParseError {
    ParseError {
        manager: "dpkg",
        path: DPKG_STATUS,
        detail,
    }
}

/// The installed packages of a status file.
pub(super) fn parse_status(bytes: &[u8]) -> Result<Vec<Package>, ParseError> {
    let text = String::from_utf8_lossy(bytes);
    let mut packages = Vec::new();
    let mut fields: Vec<(&str, String)> = Vec::new();
    let mut first_line = 1;
    for (index, line) in text.lines().chain(std::iter::once("")).enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            if !fields.is_empty() {
                if let Some(p) = paragraph(&fields, first_line)? {
                    packages.push(p);
                }
                fields.clear();
            }
            first_line = number + 1;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation line belongs to the field above (descriptions, conffiles).
            match fields.last_mut() {
                Some((_, value)) => {
                    value.push('\n');
                    value.push_str(line.trim());
                }
                None => {
                    return Err(error(format!(
                        "line {number} continues a field but no field comes before it"
                    )))
                }
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(error(format!("line {number} is not `Field: value`")));
        };
        fields.push((key.trim(), value.trim().to_string()));
    }
    Ok(packages)
}

/// One paragraph: a package when its status says it is installed.
fn paragraph(fields: &[(&str, String)], line: usize) -> Result<Option<Package>, ParseError> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    // `Status: want flag state`; only `installed` means the files are there and configured.
    let installed = get("Status")
        .and_then(|s| s.split_whitespace().nth(2))
        .is_some_and(|state| state == "installed");
    if !installed {
        return Ok(None);
    }
    let name = get("Package").filter(|n| !n.is_empty()).ok_or_else(|| {
        error(format!(
            "the installed package at line {line} has no `Package` field"
        ))
    })?;
    let version = get("Version")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| error(format!("installed package `{name}` has no `Version` field")))?;
    // `Source: name` or `Source: name (version)`.
    let source = get("Source")
        .and_then(|s| s.split_whitespace().next())
        .filter(|s| *s != name)
        .map(str::to_string);
    Ok(Some(Package {
        manager: Manager::Dpkg,
        name: name.to_string(),
        version: version.to_string(),
        arch: get("Architecture").unwrap_or_default().to_string(),
        source,
    }))
}
