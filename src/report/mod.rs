//! Renderings: plans (human text, JSON) and, for `apply`, event streams. Engines produce
//! values; only this module turns them into text. Colour is decided by the caller
//! (terminal, `NO_COLOR`, pipes) and passed in, so renderings are testable as strings.

pub mod apply;
pub mod ci;
pub mod graph;
pub mod html;
pub mod markdown;
pub mod packages;
pub mod plan;
pub mod saved;
pub mod sbom;
pub mod state;
pub mod why;

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};

/// Writes to stdout, ignoring a closed pipe (`imgraph plan | head`): output is a
/// courtesy, and an `apply` must go on to clean up its instances whatever happens to it.
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// [`out`] with a newline.
pub fn outln(text: &str) {
    out(&format!("{text}\n"));
}

/// Colours for human output; `Palette::plain()` yields no escape codes at all.
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    pub color: bool,
}

impl Palette {
    pub fn plain() -> Self {
        Palette { color: false }
    }
    /// Colour when stdout is a terminal and `NO_COLOR` is unset (anstream's rules).
    pub fn for_stdout() -> Self {
        let choice = anstream::AutoStream::choice(&std::io::stdout());
        Palette {
            color: !matches!(choice, anstream::ColorChoice::Never),
        }
    }
    pub fn for_stderr() -> Self {
        let choice = anstream::AutoStream::choice(&std::io::stderr());
        Palette {
            color: !matches!(choice, anstream::ColorChoice::Never),
        }
    }
    pub fn paint(&self, style: Style, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let mut s = String::new();
        let _ = write!(s, "{}{}{}", style.render(), text, style.render_reset());
        s
    }
    pub fn green(&self, t: &str) -> String {
        self.paint(Style::new().fg_color(Some(AnsiColor::Green.into())), t)
    }
    pub fn yellow(&self, t: &str) -> String {
        self.paint(Style::new().fg_color(Some(AnsiColor::Yellow.into())), t)
    }
    pub fn red(&self, t: &str) -> String {
        self.paint(Style::new().fg_color(Some(AnsiColor::Red.into())), t)
    }
    pub fn cyan(&self, t: &str) -> String {
        self.paint(Style::new().fg_color(Some(AnsiColor::Cyan.into())), t)
    }
    pub fn dim(&self, t: &str) -> String {
        self.paint(Style::new().dimmed(), t)
    }
    pub fn bold(&self, t: &str) -> String {
        self.paint(Style::new().bold(), t)
    }
}

/// `b3v1:0123456789abcdef…` → `0123456789ab` (enough to tell keys apart on screen).
pub fn short_id(id: &str) -> String {
    let body = id.split_once(':').map(|(_, b)| b).unwrap_or(id);
    if body.len() > 12 && body.chars().all(|c| c.is_ascii_hexdigit()) {
        let prefix = id.split_once(':').map(|(p, _)| p).unwrap_or("");
        if prefix.is_empty() || prefix == "b3v1" {
            body[..12].to_string()
        } else {
            format!("{prefix}:{}", &body[..12])
        }
    } else {
        id.to_string()
    }
}

/// Milliseconds since the epoch → RFC 3339 (UTC, seconds).
pub fn timestamp(ms: i64) -> String {
    // Clamped to years 1970..9999: humantime cannot print later dates, and a corrupt
    // state file must not crash a listing.
    const YEAR_9999_MS: i64 = 253_402_300_799_000;
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.clamp(0, YEAR_9999_MS) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `imgraph validate`'s answer: `PATH: 2 images, 1 source, 2 environments, 8 stages: ok`.
pub fn validate_line(config: &str, counts: &[(usize, &str, &str)]) -> String {
    let parts: Vec<String> = counts
        .iter()
        .map(|(n, one, many)| format!("{n} {}", plan::plural(*n, one, many)))
        .collect();
    format!("{config}: {}: ok", parts.join(", "))
}
