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
//! `--opt=PATH` and `NAME=PATH` words also offer the part after the first `=`.

/// Candidate words of `command`, in order, duplicates removed.
pub(crate) fn candidates(command: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |word: Word| {
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
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.text.push(q);
                }
            }
            '"' => {
                started = true;
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
                            skip_expansion(q, &mut chars);
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
                skip_expansion(c, &mut chars);
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
    out
}

/// Skips what an expansion starting with `start` (`$` or a backquote) covers: the
/// whole of `$(…)`, `${…}` and `` `…` ``, nested parentheses included; after a bare `$`,
/// nothing (the variable name stays part of the word, which is dynamic anyway).
fn skip_expansion(start: char, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    let close = match (start, chars.peek()) {
        ('`', _) => '`',
        ('$', Some('(')) => ')',
        ('$', Some('{')) => '}',
        _ => return,
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
}

#[derive(Debug, Default)]
struct Word {
    text: String,
    /// Contains an expansion (`$`, backquote): its meaning is known only at run time.
    dynamic: bool,
    /// The target of an output redirection.
    output: bool,
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn plain_words_and_quotes() {
        assert_eq!(candidates("sh scripts/x.sh"), ["sh", "scripts/x.sh"]);
        assert_eq!(
            candidates("python3 'tools/my gen.py' --out \"a b\""),
            ["python3", "tools/my gen.py", "--out", "a b"]
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
    fn comments_are_skipped_but_not_hashes_inside_words() {
        assert_eq!(candidates("sh a#b.sh # sh c.sh"), ["sh", "a#b.sh"]);
    }
}
