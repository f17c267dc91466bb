//! A secret read from a file when the config is loaded (`admin.purge_token_file`): the file
//! holds the value (trailing whitespace dropped), the config only its path, and `Debug` never
//! prints it. Read once, at load, so a missing or empty file fails validation before anything
//! binds instead of failing every request later.

use serde::{Deserialize, Deserializer};
use std::path::PathBuf;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    path: PathBuf,
    value: String,
}

impl Secret {
    /// Reads `path`: the secret is its content without trailing whitespace. It must be at least
    /// 16 bytes of visible ASCII, so it can travel in a header and is not guessable by hand.
    pub fn read(path: &str) -> Result<Secret, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let value = text.trim_end().to_string();
        if value.len() < 16 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{path}: the token must be at least 16 visible ASCII characters (no spaces)"
            ));
        }
        Ok(Secret {
            path: path.into(),
            value,
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Compares in time independent of where `given` first differs.
    pub fn matches(&self, given: &[u8]) -> bool {
        let want = self.value.as_bytes();
        let mut diff = (want.len() != given.len()) as u8;
        for (i, w) in want.iter().enumerate() {
            diff |= w ^ given.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }

    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({:?}, redacted)", self.path)
    }
}

/// `deserialize_with` for an optional secret file path.
pub fn file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    let path = String::deserialize(d)?;
    Secret::read(&path)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trims_refuses_short_and_compares() {
        let dir = std::env::temp_dir().join(format!("shellac-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t");
        std::fs::write(&p, "0123456789abcdef\n").unwrap();
        let s = Secret::read(p.to_str().unwrap()).unwrap();
        assert!(s.matches(b"0123456789abcdef"));
        assert!(!s.matches(b"0123456789abcdeg"));
        assert!(!s.matches(b"0123456789abcdef0"));
        assert!(!format!("{s:?}").contains("0123"));
        std::fs::write(&p, "short").unwrap();
        assert!(Secret::read(p.to_str().unwrap()).is_err());
        assert!(Secret::read("/nonexistent/shellac-token").is_err());
    }
}
