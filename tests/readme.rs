//! The README's examples, run: every ```` ```console ```` block of README.md is a list of
//! `$ command` lines, each followed by the output it prints. They run in order, in one
//! folder that holds a pristine copy of `examples/quickstart` (as a fresh clone would),
//! with the binary under test first on PATH and colour off, and each output must match
//! what the README shows. So the tour cannot drift from what imgraph prints.
//!
//! Matching ignores what changes from run to run and nothing else: timestamps
//! (`[time]`), durations such as `0.1s` (`[dur]`), the length of runs of spaces (columns
//! widen with a duration), and the sandbox's own path. A line `...` in the README stands
//! for any number of lines.
//!
//! `IMGRAPH_README_UPDATE=1 cargo test --test readme` writes what the commands printed
//! into README.md (review the diff), except for examples with `...` lines and excerpts.
//!
//! Blocks marked ```` ```console excerpt ```` are not run: each of their commands must
//! appear, with the same output, among those the tour ran, `-C examples/quickstart` aside
//! (the sample plan at the top of the README is one).

mod common;

use std::path::Path;

use regex::Regex;

#[derive(Debug, Clone)]
struct Example {
    /// 1-based line of the `$` line in README.md.
    line: usize,
    command: String,
    expected: Vec<String>,
}

#[derive(Debug)]
struct Block {
    excerpt: bool,
    examples: Vec<Example>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        if let Some(block) = current.as_mut() {
            if line.trim_start().starts_with("```") {
                out.push(current.take().expect("open block"));
                continue;
            }
            if let Some(cmd) = line.strip_prefix("$ ") {
                block.examples.push(Example {
                    line: i + 1,
                    command: cmd.to_string(),
                    expected: Vec::new(),
                });
            } else if let Some(ex) = block.examples.last_mut() {
                ex.expected.push(line.to_string());
            } else {
                panic!("README.md:{}: a console block starts with `$ `", i + 1);
            }
        } else if let Some(info) = line.trim_start().strip_prefix("```console") {
            current = Some(Block {
                excerpt: info.trim() == "excerpt",
                examples: Vec::new(),
            });
        }
    }
    assert!(current.is_none(), "README.md: an unclosed console block");
    out
}

struct Normalizer {
    time: Regex,
    duration: Regex,
    spaces: Regex,
}

impl Normalizer {
    fn new() -> Self {
        Normalizer {
            time: Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").expect("regex"),
            duration: Regex::new(r"\b\d+(\.\d+)?s\b").expect("regex"),
            spaces: Regex::new(r" {2,}").expect("regex"),
        }
    }

    fn line(&self, line: &str) -> String {
        let line = self.time.replace_all(line, "[time]");
        let line = self.duration.replace_all(&line, "[dur]");
        self.spaces.replace_all(&line, " ").trim_end().to_string()
    }
}

/// Whether `actual` matches `expected`, where an expected `...` line matches any lines.
fn matches(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=actual.len()).any(|skip| matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| a == first && matches(rest, more)),
    }
}

/// An excerpt may leave out the tour's `-C examples/quickstart`.
fn same_command(ran: &str, excerpt: &str) -> bool {
    ran == excerpt || ran.replace(" -C examples/quickstart", "") == excerpt
}

fn run(command: &str, dir: &Path) -> Vec<String> {
    let bin = assert_cmd::cargo::cargo_bin("imgraph");
    let path = format!(
        "{}:{}",
        bin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{{ {command}\n}} 2>&1"))
        .current_dir(dir)
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("RUST_LOG")
        .env_remove("IMGRAPH_DIR")
        .env_remove("GITHUB_ACTIONS")
        .env_remove("GITLAB_CI")
        .output()
        .expect("run sh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_console_examples_print_what_the_readme_shows() {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).expect("README");
    let blocks = blocks(&readme);
    let tour: Vec<&Example> = blocks
        .iter()
        .filter(|b| !b.excerpt)
        .flat_map(|b| &b.examples)
        .collect();
    assert!(
        tour.len() >= 5,
        "the README's tour has console examples: {tour:?}"
    );

    let (_t, project) = common::copy_project("examples/quickstart");
    let root = project.parent().expect("parent").join("clone");
    std::fs::create_dir_all(root.join("examples")).expect("mkdir");
    std::fs::rename(&project, root.join("examples/quickstart")).expect("move");
    let sandbox = format!("{}/", root.display());

    let norm = Normalizer::new();
    let update = std::env::var_os("IMGRAPH_README_UPDATE").is_some();
    let mut rewrites: Vec<(&Example, Vec<String>)> = Vec::new();
    let mut ran: Vec<(String, Vec<String>)> = Vec::new();
    let mut failures = Vec::new();
    for ex in &tour {
        let raw: Vec<String> = run(&ex.command, &root)
            .iter()
            .map(|l| l.replace(&sandbox, ""))
            .collect();
        let actual: Vec<String> = raw.iter().map(|l| norm.line(l)).collect();
        let expected: Vec<String> = ex.expected.iter().map(|l| norm.line(l)).collect();
        if !matches(&expected, &actual) && update && !ex.expected.iter().any(|l| l == "...") {
            rewrites.push((ex, raw));
        } else if !matches(&expected, &actual) {
            failures.push(format!(
                "README.md:{}: `{}` printed:\n{}\n--- the README shows:\n{}",
                ex.line,
                ex.command,
                actual.join("\n"),
                expected.join("\n")
            ));
        }
        ran.push((ex.command.clone(), actual));
    }
    for ex in blocks
        .iter()
        .filter(|b| b.excerpt)
        .flat_map(|b| &b.examples)
    {
        let expected: Vec<String> = ex.expected.iter().map(|l| norm.line(l)).collect();
        let found = ran
            .iter()
            .any(|(cmd, actual)| same_command(cmd, &ex.command) && matches(&expected, actual));
        if !found {
            failures.push(format!(
                "README.md:{}: the excerpt `{}` is not what any run of it in the tour printed",
                ex.line, ex.command
            ));
        }
    }
    if !rewrites.is_empty() {
        rewrite(&readme, &rewrites);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `IMGRAPH_README_UPDATE=1`: puts what each example printed into README.md in place of
/// what it showed (examples with `...` lines, and excerpts, are left to be edited by hand).
fn rewrite(readme: &str, rewrites: &[(&Example, Vec<String>)]) {
    let mut lines: Vec<String> = readme.lines().map(str::to_string).collect();
    let mut sorted: Vec<&(&Example, Vec<String>)> = rewrites.iter().collect();
    sorted.sort_by_key(|(ex, _)| std::cmp::Reverse(ex.line));
    for (ex, raw) in sorted {
        let start = ex.line;
        lines.splice(start..start + ex.expected.len(), raw.iter().cloned());
    }
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(common::repo_root().join("README.md"), text).expect("write README.md");
    eprintln!("README.md: {} examples rewritten", rewrites.len());
}

#[test]
fn an_ellipsis_line_stands_for_any_lines() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(matches(&s(&["a", "...", "d"]), &s(&["a", "b", "c", "d"])));
    assert!(matches(&s(&["a", "...", "d"]), &s(&["a", "d"])));
    assert!(!matches(&s(&["a", "...", "d"]), &s(&["a", "b"])));
    assert!(!matches(&s(&["a"]), &s(&["a", "b"])));
    let n = Normalizer::new();
    assert_eq!(
        n.line("2026-11-27T03:50:00Z ok      build:base (0.1s)"),
        "[time] ok build:base ([dur])"
    );
}
