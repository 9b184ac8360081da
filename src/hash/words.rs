//! The words of a shell command that may name project files (implicit inputs).
//!
//! A command is split the way `sh` would split a simple command line, without running
//! anything: whitespace separates words, `'…'` and `"…"` quote, a backslash escapes the
//! next character, and the operators `; & | ( ) < >` end a word. What comes out is a list
//! of *candidates*; the hasher keeps those that name an existing file or folder inside
//! the project.
//!
//! Left out on purpose, because what they name is only known when the command runs:
//! - words with `$` or a backquote (`$IMGRAPH_ROOT/etc`, `$(cat list)`, `` `pwd` ``),
//!   including everything inside `$(…)`;
//! - words with glob characters (`*.sh`), whose matches the shell picks at run time;
//! - the target of an output redirection (`> out.txt`, `>> log`): an output, not an input.
//!
//! `--opt=PATH` and `NAME=PATH` words also offer the part after the first `=`, and a
//! quoted word with spaces is split again as a command (`sh -c 'sh scripts/x.sh'`), up
//! to three levels deep.

/// How deep quoted commands (`sh -c 'sh x.sh'`) are split again.
const MAX_NESTING: usize = 3;

/// Candidate words of `command`, in order, duplicates removed.
pub(crate) fn candidates(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    collect(command, 0, &mut out);
    out
}

fn collect(command: &str, depth: usize, out: &mut Vec<String>) {
    let mut push = |word: Word| {
        // A quoted word with spaces may be a command itself (`sh -c 'sh scripts/x.sh'`).
        if word.quoted && depth < MAX_NESTING && word.text.contains(char::is_whitespace) {
            collect(&word.text, depth + 1, out);
        }
        if word.dynamic || word.output || word.text.is_empty() {
            return;
        }
        let mut found = vec![word.text.clone()];
        if let Some((_, value)) = word.text.split_once('=') {
            found.push(value.to_owned());
        }
        for w in found {
            if !w.is_empty() && !super::walk::is_glob(&w) && !out.contains(&w) {
                out.push(w);
            }
        }
    };
    let mut word = Word::default();
    // The next word is the target of an output redirection.
    let mut redirect_out = false;
    let mut chars = command.chars().peekable();
    let mut started = false;
    let finish = |word: &mut Word, started: &mut bool, redirect_out: &mut bool| {
        if *started {
            let mut done = std::mem::take(word);
            done.output = *redirect_out;
            *redirect_out = false;
            *started = false;
            Some(done)
        } else {
            None
        }
    };
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = finish(&mut word, &mut started, &mut redirect_out) {
                    push(w);
                }
            }
            ';' | '&' | '|' | '(' | ')' | '<' | '>' => {
                if let Some(w) = finish(&mut word, &mut started, &mut redirect_out) {
                    push(w);
                }
                if c == '>' {
                    // `>`, `>>`, `>|`, `>&2`: whatever follows is written, not read.
                    while matches!(chars.peek(), Some('>' | '|' | '&')) {
                        chars.next();
                    }
                    redirect_out = true;
                } else if c == '<' {
                    redirect_out = false;
                }
            }
            '\'' => {
                started = true;
                word.quoted = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.text.push(q);
                }
            }
            '"' => {
                started = true;
                word.quoted = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => word.text.push(e),
                            Some('\n') => {}
                            Some(e) => {
                                word.text.push('\\');
                                word.text.push(e);
                            }
                            None => {}
                        },
                        '$' | '`' => {
                            word.dynamic = true;
                            // A bare `$NAME` stays in the text, so that splitting the
                            // word again sees an expansion there too.
                            if !skip_expansion(q, &mut chars) {
                                word.text.push(q);
                            }
                        }
                        other => word.text.push(other),
                    }
                }
            }
            '\\' => {
                started = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(e) => word.text.push(e),
                }
            }
            '$' | '`' => {
                started = true;
                word.dynamic = true;
                if !skip_expansion(c, &mut chars) {
                    word.text.push(c);
                }
            }
            '#' if !started => {
                // A comment runs to the end of the line.
                for q in chars.by_ref() {
                    if q == '\n' {
                        break;
                    }
                }
            }
            other => {
                started = true;
                word.text.push(other);
            }
        }
    }
    if let Some(w) = finish(&mut word, &mut started, &mut redirect_out) {
        push(w);
    }
}

/// Skips what an expansion starting with `start` (`$` or a backquote) covers: the
/// whole of `$(…)`, `${…}` and `` `…` ``, nested parentheses included, and says so;
/// after a bare `$`, nothing (the variable name stays part of the word, which is dynamic
/// anyway).
fn skip_expansion(start: char, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    let close = match (start, chars.peek()) {
        ('`', _) => '`',
        ('$', Some('(')) => ')',
        ('$', Some('{')) => '}',
        _ => return false,
    };
    let open = if start == '$' { chars.next() } else { None };
    let mut depth = 1usize;
    for c in chars.by_ref() {
        if Some(c) == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                break;
            }
        }
    }
    true
}

#[derive(Debug, Default)]
struct Word {
    text: String,
    /// Contains an expansion (`$`, backquote): its meaning is known only at run time.
    dynamic: bool,
    /// The target of an output redirection.
    output: bool,
    /// Had quotes: may be a whole command (`sh -c '…'`).
    quoted: bool,
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn plain_words_and_quotes() {
        assert_eq!(candidates("sh scripts/x.sh"), ["sh", "scripts/x.sh"]);
        assert_eq!(
            candidates("python3 'tools/my gen.py' --out \"a b\""),
            // A quoted word with spaces is also tried as a command of its own.
            [
                "python3",
                "tools/my",
                "gen.py",
                "tools/my gen.py",
                "--out",
                "a",
                "b",
                "a b"
            ]
        );
        assert_eq!(candidates(r"cat my\ file"), ["cat", "my file"]);
    }

    #[test]
    fn operators_end_words() {
        assert_eq!(
            candidates("sh a.sh&&sh b.sh;(cd c)|tee"),
            ["sh", "a.sh", "b.sh", "cd", "c", "tee"]
        );
    }

    #[test]
    fn expansions_and_globs_are_left_out() {
        assert_eq!(
            candidates(
                "cp $IMGRAPH_ROOT/x \"$HOME\" `cat a` $(cat \"$(b)\" c) ${d} conf/*.yml keep"
            ),
            ["cp", "keep"]
        );
    }

    #[test]
    fn output_redirections_are_not_inputs() {
        assert_eq!(
            candidates("sh gen.sh > out.txt 2>>err.log <in.txt >&2"),
            ["sh", "gen.sh", "2", "in.txt"]
        );
    }

    #[test]
    fn option_and_assignment_values_are_offered() {
        assert_eq!(
            candidates("CONF=conf/a.yml tool --config=conf/b.yml"),
            [
                "CONF=conf/a.yml",
                "conf/a.yml",
                "tool",
                "--config=conf/b.yml",
                "conf/b.yml"
            ]
        );
    }

    #[test]
    fn quoted_commands_are_split_again() {
        assert_eq!(
            candidates("sh -c 'sh scripts/x.sh \"$ARG\" && ./deliver.sh'"),
            [
                "sh",
                "-c",
                "scripts/x.sh",
                "./deliver.sh",
                "sh scripts/x.sh \"$ARG\" && ./deliver.sh"
            ]
        );
        assert_eq!(
            candidates("bash -lc \"python3 tools/gen.py $OUT\""),
            ["bash", "-lc", "python3", "tools/gen.py"]
        );
    }

    #[test]
    fn comments_are_skipped_but_not_hashes_inside_words() {
        assert_eq!(candidates("sh a#b.sh # sh c.sh"), ["sh", "a#b.sh"]);
    }
}
