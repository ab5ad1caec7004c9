//! Workload attestation from what the kernel says about the caller of the
//! Unix socket: uid, gid and pid (SO_PEERCRED), and from the pid the
//! executable's path and SHA-256.
//!
//! Selectors produced: `unix:uid:N`, `unix:gid:N`, `unix:path:/abs/path`,
//! `unix:sha256:HEX`. The digest is cached by (path, device, inode, size,
//! mtime) so a busy workload does not make the agent re-read its binary.
//!
//! Known limit (shared with SPIRE's unix attestor): a pid can be reused
//! between the connection and the `/proc` lookup. The agent reads `/proc`
//! while the caller's connection is open, which keeps the window short.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use credence_core::Selector;

/// What the kernel reported about the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("the caller's credentials are unavailable")]
    NoCredentials,
    #[error("cannot inspect process {pid}: {why}")]
    Process { pid: i32, why: String },
}

type FileKey = (PathBuf, u64, u64, u64, i64, i64);

/// Attests workloads; holds the digest cache.
#[derive(Default)]
pub struct Attestor {
    digests: Mutex<HashMap<FileKey, String>>,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor").finish_non_exhaustive()
    }
}

/// Most digests kept; the cache is cleared when it grows past this.
const MAX_CACHED: usize = 4096;

impl Attestor {
    pub fn new() -> Self {
        Self::default()
    }

    /// The selectors of a peer.
    pub fn selectors(&self, cred: PeerCred) -> Result<Vec<Selector>, AttestError> {
        let mut out = Vec::with_capacity(4);
        let sel = |s: String| Selector::parse(&s).ok();
        out.extend(sel(format!("unix:uid:{}", cred.uid)));
        out.extend(sel(format!("unix:gid:{}", cred.gid)));
        if let Some(pid) = cred.pid {
            let exe = Path::new("/proc").join(pid.to_string()).join("exe");
            let path = std::fs::read_link(&exe).map_err(|e| AttestError::Process {
                pid,
                why: e.to_string(),
            })?;
            // the digest is read through /proc/PID/exe: it is the running
            // image even if the path was replaced since
            let digest = self
                .digest(&path, &exe)
                .map_err(|why| AttestError::Process { pid, why })?;
            out.extend(sel(format!("unix:path:{}", path.display())));
            out.extend(sel(format!("unix:sha256:{digest}")));
        }
        Ok(out)
    }

    fn digest(&self, path: &Path, exe: &Path) -> Result<String, String> {
        let meta = std::fs::metadata(exe).map_err(|e| e.to_string())?;
        let key = (
            path.to_path_buf(),
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
        );
        if let Some(d) = self.digests.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(d);
        }
        let mut f = std::fs::File::open(exe).map_err(|e| e.to_string())?;
        let mut ctx = credence_ca::Sha256Stream::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let d = hex::encode(ctx.finish());
        if let Ok(mut m) = self.digests.lock() {
            if m.len() >= MAX_CACHED {
                m.clear();
            }
            m.insert(key, d.clone());
        }
        Ok(d)
    }
}

/// Whether an identity with `required` selectors matches a workload that
/// has `have`: every required selector present, and at least one required.
pub fn matches(required: &[Selector], have: &[Selector]) -> bool {
    !required.is_empty() && required.iter().all(|r| have.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attests_this_process() {
        let a = Attestor::new();
        let me = PeerCred {
            uid: 1234,
            gid: 5678,
            pid: Some(std::process::id() as i32),
        };
        let s = a.selectors(me).unwrap();
        let strs: Vec<&str> = s.iter().map(Selector::as_str).collect();
        assert!(strs.contains(&"unix:uid:1234"));
        assert!(strs.contains(&"unix:gid:5678"));
        let exe = std::env::current_exe().unwrap();
        assert!(
            strs.contains(&format!("unix:path:{}", exe.display()).as_str()),
            "{strs:?}"
        );
        let sha = strs.iter().find(|s| s.starts_with("unix:sha256:")).unwrap();
        assert_eq!(sha.len(), "unix:sha256:".len() + 64);
        // cached: the second call agrees
        assert_eq!(a.selectors(me).unwrap(), s);
        assert!(
            a.selectors(PeerCred {
                uid: 0,
                gid: 0,
                pid: Some(i32::MAX)
            })
            .is_err()
        );
    }

    #[test]
    fn matching_rules() {
        let p = |v: &[&str]| {
            v.iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect::<Vec<_>>()
        };
        let have = p(&["unix:uid:1000", "unix:gid:1000", "unix:path:/bin/x"]);
        assert!(matches(&p(&["unix:uid:1000"]), &have));
        assert!(matches(&p(&["unix:uid:1000", "unix:path:/bin/x"]), &have));
        assert!(!matches(&p(&["unix:uid:1000", "unix:path:/bin/y"]), &have));
        assert!(!matches(&p(&["unix:uid:0"]), &have));
        assert!(
            !matches(&[], &have),
            "an identity without selectors matches nobody"
        );
    }
}
