//! Small text helpers shared by engines and reporters.

/// `line` cut to at most `max` characters for display, saying how much was left out:
/// a command that prints one 200 MB line must not put 200 MB on a terminal.
pub fn cap_line(line: &str, max: usize) -> String {
    match line.char_indices().nth(max) {
        None => line.to_string(),
        Some((cut, _)) => format!("{}… [{} more bytes]", &line[..cut], line.len() - cut),
    }
}

/// "a: b: c" from an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        assert_eq!(cap_line("short", 10), "short");
        assert_eq!(cap_line("abcdef", 3), "abc… [3 more bytes]");
        assert_eq!(cap_line("ééé", 1), "é… [4 more bytes]");
    }
}
