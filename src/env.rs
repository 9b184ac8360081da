//! The environment of every command imgraph runs: a documented minimum, never the
//! caller's whole environment (README, "Commands' environment"). A leaf module, so that
//! the probe runner in `hash` and the executor use one definition.

use crate::config::model::Sandbox;

/// `PATH` inside a sandbox (the image's standard folders).
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `SOURCE_DATE_EPOCH` of every command: 1980-01-01T00:00:00Z, the earliest time zip and
/// FAT can store (the value Nix uses). A constant, so tools that stamp dates into their
/// output (gzip, zip, Python bytecode, man pages) make the same bytes at every build.
pub const SOURCE_DATE_EPOCH: &str = "315532800";

/// The standard AWS variables a builder that needs credentials (Packer) gets from
/// imgraph's own environment, when set: credentials, profile and config files, region,
/// web-identity and container credentials, endpoints. Names ending in `*` are prefixes.
pub const AWS_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL*",
    "AWS_CA_BUNDLE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];

/// Packer's own settings (plugin and cache folders, logging), passed to Packer only.
pub const PACKER_VARIABLES: &[&str] = &["PACKER_*"];

/// Where a command runs, which decides its `PATH` and `HOME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// On the host: the caller's `PATH` and `HOME` (commands and tools are found as the
    /// caller finds them).
    Host,
    /// Inside an image: [`SANDBOX_PATH`] and `HOME=/root`.
    Sandbox,
}

impl Place {
    pub fn of(sandbox: Sandbox) -> Place {
        match sandbox {
            Sandbox::None => Place::Host,
            Sandbox::Bwrap => Place::Sandbox,
        }
    }
}

/// The environment of every command imgraph runs (build steps, tests, deliveries, probes,
/// Packer): never the caller's whole environment, but
///
/// - `PATH` and `HOME` (see [`Place`]), `LANG=C.UTF-8`, `TZ=UTC` and
///   `SOURCE_DATE_EPOCH` ([`SOURCE_DATE_EPOCH`]);
/// - the caller's value of each name in `names` (the node's `env` and `pass-env`), when set;
/// - the caller's value of each of `extra` (such as [`AWS_VARIABLES`] for Packer), when set;
/// - `context`, imgraph's own `IMGRAPH_*` variables, which nothing above can override.
///
/// `process::run` starts every command from exactly this list.
pub fn command_env(
    place: Place,
    names: &[String],
    extra: &[&str],
    context: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let caller: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    environment_from(&caller, place, names, extra, context)
}

/// [`command_env`] over a given caller environment.
fn environment_from(
    caller: &[(String, String)],
    place: Place,
    names: &[String],
    extra: &[&str],
    context: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let lookup = |name: &str| caller.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut env: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    match place {
        Place::Host => {
            for name in ["PATH", "HOME"] {
                if let Some(v) = lookup(name) {
                    env.insert(name.into(), v.clone());
                }
            }
            env.entry("PATH".into())
                .or_insert_with(|| SANDBOX_PATH.into());
        }
        Place::Sandbox => {
            env.insert("PATH".into(), SANDBOX_PATH.into());
            env.insert("HOME".into(), "/root".into());
        }
    }
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("TZ".into(), "UTC".into());
    env.insert("SOURCE_DATE_EPOCH".into(), SOURCE_DATE_EPOCH.into());
    for name in names {
        if let Some(v) = lookup(name) {
            env.insert(name.clone(), v.clone());
        }
    }
    for pattern in extra {
        match pattern.strip_suffix('*') {
            Some(prefix) => {
                for (k, v) in caller.iter().filter(|(k, _)| k.starts_with(prefix)) {
                    env.insert(k.clone(), v.clone());
                }
            }
            None => {
                if let Some(v) = lookup(pattern) {
                    env.insert((*pattern).to_string(), v.clone());
                }
            }
        }
    }
    env.extend(context);
    env.into_iter().collect()
}

/// `program` as the child's own `PATH` (in `env`) finds it: the first executable file of
/// that name in its folders, or `program` itself when it names a path, when `env` has no
/// `PATH` or one with a relative folder, or when nothing is found (the spawn then fails
/// as it would have).
///
/// The spawn is the same either way; the difference is cost. Given a bare name and a
/// `PATH` of the child's own, the standard library cannot look the name up with
/// `posix_spawnp` (which searches the parent's `PATH`) and forks imgraph instead: it
/// copies the page tables of the whole process (every tokio thread's stack, the plan,
/// the open image) for each build step, test and probe. With a path it spawns without
/// the copy.
pub fn program_in(program: &str, env: &[(String, String)]) -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let Some((_, path)) = env.iter().rev().find(|(k, _)| k == "PATH") else {
        return PathBuf::from(program);
    };
    let folders: Vec<&str> = path.split(':').collect();
    if folders.iter().any(|f| !f.starts_with('/')) {
        return PathBuf::from(program);
    }
    folders
        .iter()
        .map(|folder| Path::new(folder).join(program))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| PathBuf::from(program))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Vec<(String, String)> {
        [
            ("PATH", "/opt/bin:/usr/bin"),
            ("HOME", "/home/ci"),
            ("SECRET_TOKEN", "s3cr3t"),
            ("APP_FLAVOR", "blue"),
            ("AWS_SECRET_ACCESS_KEY", "key"),
            ("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:5055"),
            ("IMGRAPH_ROOT", "/caller/says"),
            ("LANG", "de_DE.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn names(env: &[(String, String)]) -> Vec<&str> {
        env.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn commands_get_the_minimal_environment_not_the_callers() {
        let env = environment_from(
            &caller(),
            Place::Host,
            &[],
            &[],
            vec![("IMGRAPH_IMAGE".into(), "web".into())],
        );
        assert_eq!(
            names(&env),
            [
                "HOME",
                "IMGRAPH_IMAGE",
                "LANG",
                "PATH",
                "SOURCE_DATE_EPOCH",
                "TZ"
            ]
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/opt/bin:/usr/bin"));
        assert_eq!(get("HOME"), Some("/home/ci"));
        assert_eq!(get("LANG"), Some("C.UTF-8"));
        assert_eq!(get("TZ"), Some("UTC"));
        assert_eq!(get("SOURCE_DATE_EPOCH"), Some(SOURCE_DATE_EPOCH));
    }

    #[test]
    fn a_sandbox_gets_the_images_path_and_home() {
        let env = environment_from(&caller(), Place::Sandbox, &[], &[], Vec::new());
        assert!(env.contains(&("PATH".into(), SANDBOX_PATH.into())));
        assert!(env.contains(&("HOME".into(), "/root".into())));
    }

    #[test]
    fn declared_names_and_credentials_pass_and_imgraph_context_wins() {
        let env = environment_from(
            &caller(),
            Place::Host,
            &[
                "APP_FLAVOR".into(),
                "IMGRAPH_ROOT".into(),
                "UNSET_NAME".into(),
            ],
            AWS_VARIABLES,
            vec![("IMGRAPH_ROOT".into(), "/staging/root".into())],
        );
        assert!(env.contains(&("APP_FLAVOR".into(), "blue".into())));
        assert!(env.contains(&("AWS_SECRET_ACCESS_KEY".into(), "key".into())));
        assert!(env.contains(&(
            "AWS_ENDPOINT_URL_EC2".into(),
            "http://127.0.0.1:5055".into()
        )));
        assert!(env.contains(&("IMGRAPH_ROOT".into(), "/staging/root".into())));
        assert!(!names(&env).contains(&"SECRET_TOKEN"));
        assert!(!names(&env).contains(&"UNSET_NAME"));
    }

    /// The child's `PATH` picks the program: the first executable file of that name, as
    /// `execvp` would; anything it cannot settle is left to the spawn.
    #[test]
    fn a_program_is_found_in_the_childs_own_path() {
        use std::os::unix::fs::PermissionsExt;
        use std::path::Path;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(a.join("tool")).unwrap(); // a folder, not the program
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::write(a.join("plain"), "").unwrap(); // not executable
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = |path: &str| {
            vec![
                ("HOME".to_string(), "/x".to_string()),
                ("PATH".into(), path.into()),
            ]
        };
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(program_in("tool", &env(&path)), b.join("tool"));
        assert_eq!(program_in("plain", &env(&path)), Path::new("plain"));
        assert_eq!(program_in("missing", &env(&path)), Path::new("missing"));
        assert_eq!(program_in("./tool", &env(&path)), Path::new("./tool"));
        // A relative folder would be looked up from the child's folder: left to the spawn.
        assert_eq!(
            program_in("tool", &env(&format!("bin:{}", b.display()))),
            Path::new("tool")
        );
        assert_eq!(
            program_in("tool", &env(&format!(":{}", b.display()))),
            Path::new("tool")
        );
        assert_eq!(program_in("tool", &[]), Path::new("tool"));
    }
}
