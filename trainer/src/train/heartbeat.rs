//! Liveness for the launcher's supervision: when `FERROCLIP_HEARTBEAT_DIR` is
//! set, each rank rewrites `<dir>/rank<R>` at start-up and after every step,
//! so a hung worker (stuck collective, dead NFS) is noticed by its stale mtime.

use std::path::PathBuf;

/// The environment variable the launcher sets.
pub use protocol::env::HEARTBEAT_DIR as HEARTBEAT_DIR_ENV;

/// This rank's heartbeat file, if the launcher asked for one.
pub struct Heartbeat {
    path: Option<PathBuf>,
    warned: bool,
}

impl Heartbeat {
    /// From `FERROCLIP_HEARTBEAT_DIR`; a no-op when unset.
    pub fn from_env(rank: usize) -> Self {
        let path = std::env::var_os(HEARTBEAT_DIR_ENV)
            .filter(|dir| !dir.is_empty())
            .map(|dir| PathBuf::from(dir).join(format!("rank{rank}")));
        Self { path, warned: false }
    }

    /// Records that the worker is alive at `step`. A failure to write is
    /// logged once and otherwise ignored: liveness reporting must not stop
    /// training (the launcher will notice the silence).
    pub fn beat(&mut self, step: u64) {
        let Some(path) = &self.path else { return };
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, format!("{step}\n")));
        if let Err(e) = written {
            if !self.warned {
                tracing::warn!(path = %path.display(), "cannot write heartbeat: {e}");
                self.warned = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_rewrite_the_rank_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut heartbeat = Heartbeat {
            path: Some(dir.path().join("hb").join("rank3")),
            warned: false,
        };
        heartbeat.beat(0);
        heartbeat.beat(7);
        let text = std::fs::read_to_string(dir.path().join("hb/rank3")).unwrap();
        assert_eq!(text, "7\n");
        let mut silent = Heartbeat {
            path: None,
            warned: false,
        };
        silent.beat(1);
    }
}
