//! Figures and text as people write and read them: sizes, durations, and
//! names made safe for a terminal.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bytes for a terminal: control characters, backslashes and invalid UTF-8
/// escaped (`\n`, `\x1b`), so a file name cannot move the cursor or forge
/// a line of output.
pub fn escape_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A message for a terminal that may span lines (an error chain): like
/// [`escape_text`], but its line breaks and tabs stay as they are.
pub fn escape_message(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// What follows a URL's `scheme://`, split into its user part (before
/// the last `@`, when there is one) and the rest. A password may hold `/`,
/// `#` or `?` unescaped (AWS secret keys do), so the user part runs to the
/// last `@` of the whole URL, unless a `/` comes first with no `:` before
/// it (then the `@` is in the path: `https://host/v@2`).
pub fn split_userinfo(after_scheme: &str) -> (Option<&str>, &str) {
    let Some((user, rest)) = after_scheme.rsplit_once('@') else { return (None, after_scheme) };
    let colon = user.find(':');
    match user.find('/') {
        Some(slash) if colon.is_none_or(|c| c > slash) => (None, after_scheme),
        _ => (Some(user), rest),
    }
}

/// `text` with the credentials of every URL in it hidden: the user and
/// password of `scheme://user:password@host` become `***` (a lone user
/// name is kept only for `ssh://`, where it is not a secret), so that a
/// URL echoed in an error or a log line does not carry a key. A URL ends
/// at white space or a quote.
pub fn hide_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let after_at = at + 3;
        out.push_str(&rest[..after_at]);
        let after = &rest[after_at..];
        let end = after.find(|c: char| matches!(c, '`' | '"' | '\'') || c.is_whitespace()).unwrap_or(after.len());
        let url = &after[..end];
        match split_userinfo(url) {
            (Some(user), host) => {
                let ssh = rest[..at].ends_with("ssh");
                out.push_str(if ssh && !user.contains(':') { user } else { "***" });
                out.push('@');
                out.push_str(host);
            }
            (None, _) => out.push_str(url),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// An error chain as messages, logs, run records and notifications show
/// it: one line of causes (`{:#}`), credentials hidden.
pub fn error_text(e: &anyhow::Error) -> String {
    hide_credentials(&format!("{e:#}"))
}

/// Bytes in binary units, for people.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// A size as people write it: `0`, `4096`, `500MiB`, `2GiB`, `1.5G` (binary
/// units: K, M, G, T with or without `iB`/`B`).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let bad = || format!("invalid size {s:?}: expected a number and a unit (B, KiB, MiB, GiB, TiB), like \"500MiB\"");
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let n: f64 = t[..split].parse().map_err(|_| bad())?;
    let shift = match t[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A duration written as `90s`, `5m`, `2h`, `1d`, `500ms` or a combination
/// (`1h30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DurationSpec(pub Duration);

/// The defaults the config applies when a duration is not given.
impl DurationSpec {
    pub fn ten_seconds() -> Self {
        DurationSpec(Duration::from_secs(10))
    }
    pub fn thirty_seconds() -> Self {
        DurationSpec(Duration::from_secs(30))
    }
    pub fn five_minutes() -> Self {
        DurationSpec(Duration::from_secs(300))
    }
    pub fn six_hours() -> Self {
        DurationSpec(Duration::from_secs(6 * 3600))
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(DurationSpec).map_err(serde::de::Error::custom)
    }
}

/// The longest duration holdfast takes: 100 years.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 36525 * 864);

/// Parse `1h30m`, `5m`, `26h`, `2d`, `500ms`, `30s`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let bad =
        || format!("invalid duration {s:?}: expected a number and a unit (ms, s, m, h, d), like \"5m\" or \"1h30m\"");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ms" => {
                total = total.checked_add(Duration::from_millis(n)).ok_or_else(bad)?;
                rest = &rest[unit_len..];
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            "w" => 7 * 86400,
            _ => return Err(bad()),
        };
        total = total.checked_add(Duration::from_secs(n.checked_mul(secs).ok_or_else(bad)?)).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    if total > MAX_DURATION {
        return Err(format!(
            "invalid duration {s:?}: longer than 100 years (every deadline and time computed from it must stay representable)"
        ));
    }
    Ok(total)
}

/// A point in time as people give it: a duration back from now (`7d`,
/// `36h`), a date (`2026-11-30`, local midnight) or a date and time
/// (`2026-11-30 14:00`, `2026-11-30T14:00:00Z`).
pub fn parse_since(s: &str) -> std::result::Result<jiff::Timestamp, String> {
    if let Ok(d) = parse_duration(s) {
        let d = jiff::SignedDuration::try_from(d).map_err(|e| e.to_string())?;
        return jiff::Timestamp::now().checked_sub(d).map_err(|e| e.to_string());
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let local = |dt: jiff::civil::DateTime| dt.to_zoned(jiff::tz::TimeZone::system()).map(|z| z.timestamp());
    if let Ok(dt) = s.replacen(' ', "T", 1).parse::<jiff::civil::DateTime>() {
        return local(dt).map_err(|e| e.to_string());
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return local(d.to_datetime(jiff::civil::Time::midnight())).map_err(|e| e.to_string());
    }
    Err(format!(
        "invalid time {s:?}: expected a duration back from now (\"7d\", \"36h\"), a date (\"2026-11-30\") or a date and time (\"2026-11-30 14:00\")"
    ))
}

/// A time as people read it: local, to the second, with the offset.
pub fn local_time(t: &jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S %z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_hidden_wherever_they_are() {
        let text = "endpoint `http://AKIA:Secret@s3.local:3900/x` and s3://AKIA:Secret@bucket/p, \
                    https://tok@hooks.example/h?x=1, ssh://alice@box/srv, ssh://alice:pw@box/srv, http://plain/x";
        let hidden = hide_credentials(text);
        assert!(!hidden.contains("Secret") && !hidden.contains("tok@") && !hidden.contains("pw"), "{hidden}");
        assert!(hidden.contains("http://***@s3.local:3900/x") && hidden.contains("s3://***@bucket/p"), "{hidden}");
        assert!(hidden.contains("ssh://alice@box/srv") && hidden.contains("ssh://***@box/srv"), "{hidden}");
        assert!(hidden.contains("http://plain/x"), "{hidden}");
        assert_eq!(hide_credentials("no url: a@b"), "no url: a@b");
        // Passwords with the characters that end a host (AWS keys hold `/`).
        for url in ["s3://AKIA:wJal/K7MD/bPxR@bucket/p", "ssh://alice:p#s?s@host/r", "http://bob:S3c/ret@h:9/x/T"] {
            let hidden = hide_credentials(&format!("error: \"{url}\": x"));
            assert!(hidden.contains("://***@") && !hidden.contains(':') || !hidden.contains("K7MD"), "{hidden}");
            assert!(!hidden.contains("wJal") && !hidden.contains("p#s") && !hidden.contains("S3c"), "{hidden}");
        }
        // An `@` in a path is not a user part.
        assert_eq!(hide_credentials("https://host/v@2 and https://host:8/a"), "https://host/v@2 and https://host:8/a");
    }

    #[test]
    fn sizes_need_a_known_unit() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("500 mb").unwrap(), 500 << 20);
        assert_eq!(parse_size("7").unwrap(), 7);
        for bad in ["1iB", "1bb", "1KiBB", "MiB", "1x"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("26h").unwrap(), Duration::from_secs(26 * 3600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
        let week_ago = parse_since("7d").unwrap();
        let age = jiff::Timestamp::now().duration_since(week_ago).as_secs();
        assert!((7 * 86400 - 5..=7 * 86400 + 5).contains(&age));
        assert!(parse_since("2026-11-30").unwrap() < parse_since("2026-11-30 14:00").unwrap());
        assert_eq!(parse_since("2026-11-30T14:00:00Z").unwrap().as_second(), 1_796_047_200);
        assert!(parse_since("last tuesday").unwrap_err().contains("expected a duration"));
    }

    #[test]
    fn durations_past_a_hundred_years_are_errors_not_overflows() {
        assert_eq!(parse_duration("36500d").unwrap(), Duration::from_secs(36500 * 86400));
        for huge in ["18446744073709551615s1s", "18446744073709551615ms18446744073709551615s", "36525d1s", "5000000d"] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains(huge), "{e}");
        }
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64kb"), Ok(64 << 10));
        for bad in ["", "MiB", "-1G", "1 XB", "1e400", "99999999999T", "1..2M"] {
            assert!(parse_size(bad).unwrap_err().contains("expected a number and a unit"), "{bad}");
        }
    }
}
