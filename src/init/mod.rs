//! `imgraph init`: writes a small working project — a local one that validates and applies
//! with nothing but imgraph, or an AWS one that validates without credentials.
//!
//! The files are embedded from `src/init/{local,aws}/`, which are ordinary files so they
//! can be read and tried as they are. Nothing is ever overwritten: if any of the files
//! exists, init writes none of them.

use std::path::{Path, PathBuf};

/// Which project to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    Local,
    Aws,
}

/// (path in the project, contents, executable)
type File = (&'static str, &'static str, bool);

const LOCAL: &[File] = &[
    ("imgraph.kdl", include_str!("local/imgraph.kdl"), false),
    (".gitignore", include_str!("local/gitignore"), false),
    (
        "bases/origin/etc/os-release",
        include_str!("local/bases/origin/etc/os-release"),
        false,
    ),
    ("config/motd", include_str!("local/config/motd"), false),
    ("packages.txt", include_str!("local/packages.txt"), false),
    (
        "scripts/provision.sh",
        include_str!("local/scripts/provision.sh"),
        true,
    ),
    ("tests/smoke.sh", include_str!("local/tests/smoke.sh"), true),
    ("deliver.sh", include_str!("local/deliver.sh"), true),
];

const AWS: &[File] = &[
    ("imgraph.kdl", include_str!("aws/imgraph.kdl"), false),
    (".gitignore", include_str!("aws/gitignore"), false),
    ("tests/smoke.sh", include_str!("aws/tests/smoke.sh"), true),
];

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum InitError {
    #[error("failed to write a new project into {}: {} already exists", dir.display(), existing.display())]
    #[diagnostic(help("run `imgraph init` in an empty folder, or pass -C NEW-FOLDER"))]
    Exists { dir: PathBuf, existing: PathBuf },
    #[error("failed to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the project into `dir` (created if missing) and returns the files written,
/// relative to `dir`.
pub fn write_project(dir: &Path, template: Template) -> Result<Vec<&'static str>, InitError> {
    let files = match template {
        Template::Local => LOCAL,
        Template::Aws => AWS,
    };
    if let Some((path, _, _)) = files
        .iter()
        .find(|(path, _, _)| dir.join(path).symlink_metadata().is_ok())
    {
        return Err(InitError::Exists {
            dir: dir.to_path_buf(),
            existing: PathBuf::from(path),
        });
    }
    for (rel, text, executable) in files {
        let path = dir.join(rel);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text)?;
            if *executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        };
        write(&path).map_err(|source| InitError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(files.iter().map(|(p, _, _)| *p).collect())
}
