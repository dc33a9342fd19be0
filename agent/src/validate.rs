//! Validation of names that come from the host and end up in paths.

use crate::error::{AgentError, Result};

/// Longest container or exec id accepted (runc has no limit; 1024 keeps
/// paths well under PATH_MAX).
pub const MAX_ID_LEN: usize = 1024;

/// Checks a container id: runc's rule (`[A-Za-z0-9_+.-]+`), never `.` or
/// `..`, so that it is always one safe path component.
pub fn container_id(id: &str) -> Result<()> {
    check_id("container id", id, false)
}

/// Checks an exec id. Empty is allowed: it names the container's init process.
pub fn exec_id(id: &str) -> Result<()> {
    check_id("exec id", id, true)
}

fn check_id(what: &str, id: &str, allow_empty: bool) -> Result<()> {
    if id.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(AgentError::InvalidArgument(format!("{what} is empty")))
        };
    }
    if id.len() > MAX_ID_LEN {
        return Err(AgentError::InvalidArgument(format!(
            "{what} is longer than {MAX_ID_LEN} bytes"
        )));
    }
    if id == "." || id == ".." {
        return Err(AgentError::InvalidArgument(format!(
            "{what} {id:?} is not allowed"
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.')))
    {
        return Err(AgentError::InvalidArgument(format!(
            "{what} {id:?} contains {bad:?}: only letters, digits, '_', '+', '-' and '.' are allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_runc_style_ids() {
        for id in ["abc", "a.b-c_d+e", "0123456789abcdef", "x..y"] {
            assert!(container_id(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_path_like_and_odd_ids() {
        for id in ["", ".", "..", "a/b", "../x", "a b", "a\0b", "é"] {
            assert!(container_id(id).is_err(), "{id:?}");
        }
        assert!(container_id(&"a".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn exec_id_may_be_empty() {
        assert!(exec_id("").is_ok());
        assert!(exec_id("../x").is_err());
    }
}
