//! OCI `linux.resources.cpu.cpus` and `.mems` lists ("0-3,7"): what the VM
//! must have for them to mean something inside it.

/// Most CPUs or memory nodes a list may name (far above any VM).
const MAX_INDEX: u32 = 4095;

/// A malformed cpuset list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{list:?} is not a CPU list (like \"0-3,7\")")]
pub struct Error {
    /// The list as given.
    pub list: String,
}

/// The highest index `list` names, or `None` for an empty list.
pub fn highest(list: &str) -> Result<Option<u32>, Error> {
    let bad = || Error {
        list: list.to_owned(),
    };
    let mut highest = None;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let first: u32 = first.parse().map_err(|_| bad())?;
        let last: u32 = last.parse().map_err(|_| bad())?;
        if first > last || last > MAX_INDEX {
            return Err(bad());
        }
        highest = highest.max(Some(last));
    }
    Ok(highest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_index_of_ranges_and_singles() {
        assert_eq!(highest("0-3,7"), Ok(Some(7)));
        assert_eq!(highest("2"), Ok(Some(2)));
        assert_eq!(highest(" 1 , 0-1 "), Ok(Some(1)));
        assert_eq!(highest(""), Ok(None));
    }

    #[test]
    fn malformed_lists_are_refused() {
        for list in ["a", "3-1", "1-", "-1", "0-99999", "1;2"] {
            assert!(highest(list).is_err(), "{list:?}");
        }
    }
}
