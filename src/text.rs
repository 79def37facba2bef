//! Bad input quoted in messages: short, with control characters escaped, so that one error
//! stays one line whatever the input held.

use std::fmt::Write;

/// At most `max` characters of `s`, control characters (and `\`) escaped; a cut says how long
/// the original was.
pub fn excerpt(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (shown, c) in s.chars().enumerate() {
        if shown == max {
            let _ = write!(out, "…({} bytes)", s.len());
            break;
        }
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A path as it is shown in messages: escaped, and cut if absurdly long.
pub fn path(p: &std::path::Path) -> String {
    excerpt(&p.to_string_lossy(), 300)
}

/// An error and its causes on one line, each cause said once: a cause whose text its parent
/// already includes (thiserror's `{0}` plus `#[source]`) is not repeated.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    // Paths and input in the messages are escaped already; only line breaks may remain.
    let mut out: String = line
        .chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect();
    if out.len() > 2000 {
        out = format!("{}…", cut(&out, 2000));
    }
    out
}

/// What a credential is replaced with wherever a vendor's text is quoted.
pub const SCRUBBED: &str = "***";
/// Parts of a credential at least this long are scrubbed on their own (the key inside `Bearer
/// KEY`); shorter ones would scrub ordinary words.
const SCRUB_MIN_LEN: usize = 8;

/// `text` with every credential (and every long enough word of one) replaced by `***`: a vendor
/// may echo what it was sent, whatever the status or channel.
pub fn scrub(text: &str, secrets: &[crate::config::Secret]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        let whole = secret.expose();
        let parts = whole
            .split_whitespace()
            .filter(|p| p.len() >= SCRUB_MIN_LEN);
        for s in std::iter::once(whole).chain(parts) {
            if !s.is_empty() && out.contains(s) {
                out = out.replace(s, SCRUBBED);
            }
        }
    }
    out
}

/// `: "…"` after an error's words when there is a vendor text to quote, else nothing.
pub fn quoted_suffix(excerpt: &str) -> String {
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_escape_and_cut() {
        assert_eq!(excerpt("a\nb\0c", 10), "a\\nb\\u{0}c");
        assert_eq!(excerpt("abcdef", 3), "abc…(6 bytes)");
        assert_eq!(excerpt("", 3), "");
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("abc", 5), "abc");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: cannot open: {source}")]
    struct Open {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Wrap(#[source] Open);

    #[test]
    fn each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = Wrap(Open {
            path: "x.csv".into(),
            source: io,
        });
        assert_eq!(one_line(&e), "x.csv: cannot open: No such file");
    }

    #[test]
    fn credentials_are_scrubbed_whole_and_in_long_parts() {
        let secrets = [crate::config::Secret::new("Bearer sekrit-key-123")];
        assert_eq!(
            scrub("key sekrit-key-123 is not entitled", &secrets),
            "key *** is not entitled"
        );
        assert_eq!(scrub("no Bearer here", &secrets), "no Bearer here");
    }
}
