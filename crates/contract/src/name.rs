//! The one rule for names: resources, groups and nodes are named alike, and
//! a name is used as-is in the CLI, in API paths, in cgroup directories and
//! in etcd keys.

/// Why a name cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name {0:?} must be 1 to 64 characters")]
    Length(String),
    #[error(
        "name {0:?} may only hold letters, digits, '-', '_' and '.', and must not start with '.' or '-'"
    )]
    Characters(String),
}

/// Checks a resource, group or node name: `[A-Za-z0-9._-]`, 1 to 64
/// characters, not starting with `.` or `-` (so it is never `.`, `..` or
/// an option, and never holds `/`).
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 64 {
        return Err(NameError::Length(name.to_owned()));
    }
    if name.starts_with(['.', '-'])
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(NameError::Characters(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web-1", "db_primary", "x.y", "A9", &"n".repeat(64)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", &"n".repeat(65)] {
            assert!(
                matches!(check_name(bad), Err(NameError::Length(_))),
                "{bad}"
            );
        }
        for bad in [".", "..", ".hidden", "-flag", "a/b", "a b", "é", "a\n"] {
            assert!(
                matches!(check_name(bad), Err(NameError::Characters(_))),
                "{bad}"
            );
        }
    }
}
