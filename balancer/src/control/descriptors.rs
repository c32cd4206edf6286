//! The balancer's file descriptor budget: every relayed connection holds
//! two, so the soft `RLIMIT_NOFILE` a shell hands down (often 1,024) would
//! cap it at about 500 connections whatever the machine allows. At start
//! the soft limit is raised to the hard one, and what it got is logged, so
//! that the limit is the operator's (`LimitNOFILE=`, the container
//! runtime's), not the calling shell's.

use std::io;

/// The descriptor limit before and after [`raise_to_hard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// The soft limit as the process started with it.
    pub was: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most an unprivileged process may raise to).
    pub hard: u64,
}

/// Why the limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// `getrlimit` failed.
    #[error("reading RLIMIT_NOFILE: {0}")]
    Get(io::Error),
    /// `setrlimit` failed.
    #[error("raising RLIMIT_NOFILE to {hard}: {error}")]
    Set {
        /// The limit asked for.
        hard: u64,
        /// What the kernel said.
        error: io::Error,
    },
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit.
pub fn raise_to_hard() -> Result<Descriptors, DescriptorError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(DescriptorError::Get(io::Error::last_os_error()));
    }
    let was = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(DescriptorError::Set {
                hard: limit.rlim_max,
                error: io::Error::last_os_error(),
            });
        }
        limit = raised;
    }
    Ok(Descriptors {
        was,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let raised = raise_to_hard().unwrap();
        assert_eq!(raised.soft, raised.hard);
        assert!(raised.soft >= raised.was);
        // Idempotent: a second call finds nothing to raise.
        let again = raise_to_hard().unwrap();
        assert_eq!((again.was, again.soft), (raised.soft, raised.soft));
    }
}
