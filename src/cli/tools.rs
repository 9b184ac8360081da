//! Commands around the project rather than its images: `init`, `completions`, `man`.

use std::path::Path;

use clap::CommandFactory;

use super::Cli;
use crate::error::{Error, Result};
use crate::exit;
use crate::init::Template;

pub use clap_complete::Shell;

pub fn init(cli: &Cli, aws: bool) -> Result<i32> {
    let template = if aws { Template::Aws } else { Template::Local };
    let files = crate::init::write_project(&cli.dir, template)?;
    let shown = cli.dir.display();
    crate::report::outln(&format!(
        "wrote a new {} project in {shown}: {}",
        if aws { "AWS" } else { "local" },
        files.join(", ")
    ));
    let next = if aws {
        "next: set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), then `imgraph plan`"
    } else {
        "next: `imgraph validate`, `imgraph plan`, `imgraph apply`"
    };
    let dir_arg = if cli.dir == Path::new(".") {
        String::new()
    } else {
        format!(" (with -C {shown})")
    };
    crate::report::outln(&format!("{next}{dir_arg}"));
    Ok(exit::OK)
}

pub fn completions(shell: Shell) -> Result<i32> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "imgraph", &mut out);
    crate::report::out(&String::from_utf8_lossy(&out));
    Ok(exit::OK)
}

pub fn man(out_dir: Option<&Path>) -> Result<i32> {
    let cmd = Cli::command();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .and_then(|()| clap_mangen::generate_to(cmd, dir))
                .map_err(|source| Error::Io {
                    what: "failed to write the manual pages".into(),
                    path: dir.to_path_buf(),
                    source,
                })?;
            crate::report::outln(&format!("wrote the manual pages to {}", dir.display()));
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|source| Error::Io {
                    what: "failed to render the manual page".into(),
                    path: "imgraph.1".into(),
                    source,
                })?;
            crate::report::out(&String::from_utf8_lossy(&out));
        }
    }
    Ok(exit::OK)
}
