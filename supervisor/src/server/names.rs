//! File names made from the server's job ids (`server::names`), one rule for every
//! file of a job: its downloads and its outbox entry.
//!
//! Job ids are the server's text. The rule is injective (two ids never share a name),
//! safe on every file system (only `[a-z0-9_-]`, so case-insensitive ones too, and never
//! a Windows device name such as `CON`) and bounded in length.

use sha2::{Digest, Sha256};

/// Longest escaped id kept as it is; longer ones are named by their hash.
const MAX_ESCAPED: usize = 100;

/// The stem of every file of job `job_id`: `j-` + the id with each byte outside
/// `[a-z0-9-]` written as `_xx` (hex), or `j=` + its SHA-256 when that is too long.
/// No stem contains a `.`, so `<stem>.` prefixes exactly one job's files.
pub fn job_stem(job_id: &str) -> String {
    let mut out = String::with_capacity(job_id.len() + 2);
    out.push_str("j-");
    for b in job_id.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("_{b:02x}")),
        }
        if out.len() > MAX_ESCAPED + 2 {
            return format!("j={}", hex(&Sha256::digest(job_id.as_bytes())));
        }
    }
    out
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The pairing code as logs may show it: first two characters only.
pub fn mask(code: &str) -> String {
    let head: String = code.chars().take(2).collect();
    format!("{head}***")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn job_stems_are_injective_safe_and_bounded() {
        let ids = [
            "a/b",
            "a_b",
            "a_2fb",
            "A",
            "a",
            "_41",
            "con",
            "CON",
            "a.b",
            "a..",
            "",
            "6f1c2b1e-3c1d-4c8e-9d7a-0c1b2a3d4e5f",
            "ü",
            "\u{0}",
        ];
        let long_a = "x".repeat(500);
        let long_b = format!("{}y", "x".repeat(499));
        let mut seen = HashSet::new();
        for id in ids
            .iter()
            .copied()
            .chain([long_a.as_str(), long_b.as_str()])
        {
            let s = job_stem(id);
            assert!(seen.insert(s.clone()), "{id:?} shares {s:?}");
            assert!(s.len() <= MAX_ESCAPED + 3, "{s}");
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_=".contains(&b)),
                "{s}"
            );
            assert!(s.starts_with("j-") || s.starts_with("j="), "{s}");
        }
        // A server's uuid stays readable.
        assert_eq!(
            job_stem("6f1c2b1e-3c1d-4c8e-9d7a-0c1b2a3d4e5f"),
            "j-6f1c2b1e-3c1d-4c8e-9d7a-0c1b2a3d4e5f"
        );
    }
}
