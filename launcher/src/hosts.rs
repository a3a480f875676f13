//! mpirun across several hosts: `--hosts a:2,b:2` or an Open MPI hostfile,
//! an rsh/ssh agent, and the network Open MPI should use.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One host and how many ranks it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSlots {
    /// Host name as the rsh agent understands it.
    pub host: String,
    /// Ranks on that host.
    pub slots: usize,
}

/// `a:2,b:2` (a host without `:N` has one slot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostList(pub Vec<HostSlots>);

impl FromStr for HostList {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut hosts = Vec::new();
        for item in text.split(',').map(str::trim) {
            let (host, slots) = match item.rsplit_once(':') {
                Some((host, n)) => {
                    let slots = n.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("host {host:?} in --hosts has slot count {n:?}; expected a positive integer")
                    })?;
                    (host, slots)
                }
                None => (item, 1),
            };
            if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
                return Err(format!("--hosts entry {item:?} has no valid host name"));
            }
            hosts.push(HostSlots {
                host: host.to_string(),
                slots,
            });
        }
        Ok(HostList(hosts))
    }
}

impl HostList {
    /// Total ranks.
    pub fn slots(&self) -> usize {
        self.0.iter().map(|h| h.slots).sum()
    }

    /// The Open MPI hostfile text: `host slots=N` per line.
    pub fn hostfile_text(&self) -> String {
        self.0
            .iter()
            .map(|h| format!("{} slots={}\n", h.host, h.slots))
            .collect()
    }
}

/// Why a hostfile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostfileError {
    /// The file could not be read.
    #[error("cannot read hostfile {path}: {source}")]
    Read {
        /// The hostfile.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A line is not `host [slots=N] [max_slots=M]`.
    #[error("hostfile {path} line {line}: {reason}")]
    Syntax {
        /// The hostfile.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Reads an Open MPI hostfile (`host [slots=N]`, `#` comments) into a host list.
pub fn read_hostfile(path: &Path) -> Result<HostList, HostfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hosts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(host) = words.next() else { continue };
        let mut slots = 1;
        for word in words {
            let syntax = |reason: String| HostfileError::Syntax {
                path: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| syntax(format!("expected key=value, got {word:?}")))?;
            let number = value
                .parse::<usize>()
                .map_err(|_| syntax(format!("{key} must be a number, got {value:?}")))?;
            match key {
                "slots" => slots = number,
                "max_slots" | "max-slots" => {}
                other => return Err(syntax(format!("unknown key {other:?} (expected slots or max_slots)"))),
            }
        }
        hosts.push(HostSlots {
            host: host.to_string(),
            slots,
        });
    }
    Ok(HostList(hosts))
}

/// Where and how mpirun starts the ranks. The default starts all on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MpiHosts {
    /// `--hostfile FILE`, or the file written from `hosts` into the log folder.
    pub hostfile: Option<PathBuf>,
    /// `--hosts a:2,b:2`; written to `<log-dir>/hostfile` at launch.
    pub hosts: HostList,
    /// `--mca plm_rsh_agent CMD`: how mpirun reaches the other hosts (ssh by default).
    pub rsh_agent: Option<String>,
    /// An interface or CIDR network (`eth0`, `10.77.0.0/24`) for both MPI's data
    /// (`btl_tcp_if_include`) and its control channel (`oob_tcp_if_include`).
    pub if_include: Option<String>,
    /// Which Open MPI transport carries the ranks' messages.
    pub transport: MpiTransport,
    /// Further mpirun arguments, given as they are.
    pub extra_args: Vec<OsString>,
}

/// Which Open MPI transport carries the ranks' messages (`ferroclip launch --mpi-transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MpiTransport {
    /// Open MPI's own choice (on hosts without RDMA devices: ob1 with its TCP btl between
    /// hosts, shared memory within one).
    #[default]
    Default,
    /// UCX (`pml ucx`), allowed on any device, TCP included: UCX picks the fastest transport
    /// each pair of ranks has. Over TCP it sends at the link's rate in both directions at
    /// once, where the tcp btl reaches about half (docs/benchmarks.md, `overlap`).
    Ucx,
}

impl std::str::FromStr for MpiTransport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(MpiTransport::Default),
            "ucx" => Ok(MpiTransport::Ucx),
            other => Err(format!("unknown MPI transport {other:?} (expected default or ucx)")),
        }
    }
}

impl MpiTransport {
    /// The mpirun arguments that select it.
    fn mpirun_args(self) -> Vec<OsString> {
        match self {
            MpiTransport::Default => Vec::new(),
            // Open MPI 4.1 takes UCX only over RDMA devices unless told otherwise.
            MpiTransport::Ucx => [
                "--mca",
                "pml",
                "ucx",
                "--mca",
                "pml_ucx_tls",
                "any",
                "--mca",
                "pml_ucx_devices",
                "any",
            ]
            .into_iter()
            .map(OsString::from)
            .collect(),
        }
    }
}

impl MpiHosts {
    /// Whether any host placement is asked for.
    pub fn is_multi_host(&self) -> bool {
        self.hostfile.is_some() || !self.hosts.0.is_empty()
    }

    /// The mpirun arguments that place the ranks (`hostfile` is the file to
    /// name: `self.hostfile` or the one written from `self.hosts`).
    pub(crate) fn mpirun_args(&self, hostfile: Option<&Path>) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(file) = hostfile {
            args.extend(["--hostfile".into(), file.as_os_str().to_owned()]);
        }
        if let Some(agent) = &self.rsh_agent {
            args.extend(["--mca".into(), "plm_rsh_agent".into(), agent.into()]);
        }
        if let Some(net) = &self.if_include {
            for param in ["btl_tcp_if_include", "oob_tcp_if_include"] {
                args.extend(["--mca".into(), param.into(), net.into()]);
            }
        }
        args.extend(self.transport.mpirun_args());
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists_parse_with_default_slots_and_name_bad_entries() {
        let hosts: HostList = "a:2, b:3,c".parse().unwrap();
        assert_eq!(hosts.slots(), 6);
        assert_eq!(hosts.hostfile_text(), "a slots=2\nb slots=3\nc slots=1\n");
        let err = "a:0".parse::<HostList>().unwrap_err();
        assert!(err.contains("\"a\"") && err.contains("\"0\""), "{err}");
        assert!("a:2,,b".parse::<HostList>().is_err());
    }

    #[test]
    fn hostfiles_are_read_with_comments_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "# cluster\nnode1 slots=4 max_slots=8\n\nnode2   # one slot\n").unwrap();
        let hosts = read_hostfile(&path).unwrap();
        assert_eq!(hosts.slots(), 5);
        assert_eq!(hosts.0[1].host, "node2");
        std::fs::write(&path, "node1\nnode2 slots=two\n").unwrap();
        let err = read_hostfile(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("slots must be a number"),
            "{err}"
        );
        assert!(read_hostfile(&dir.path().join("missing"))
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }

    #[test]
    fn mpirun_args_place_ranks_and_pin_the_network() {
        let hosts = MpiHosts {
            rsh_agent: Some("./nsagent.sh".into()),
            if_include: Some("10.77.0.0/24".into()),
            extra_args: vec!["--mca".into(), "btl".into(), "tcp,self".into()],
            ..MpiHosts::default()
        };
        let args: Vec<String> = hosts
            .mpirun_args(Some(Path::new("/logs/hostfile")))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "--hostfile /logs/hostfile --mca plm_rsh_agent ./nsagent.sh \
             --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 --mca btl tcp,self"
        );
    }

    #[test]
    fn the_ucx_transport_is_selected_on_any_device_and_bad_names_are_refused() {
        let hosts = MpiHosts {
            transport: "ucx".parse().unwrap(),
            ..MpiHosts::default()
        };
        let args: Vec<String> = hosts
            .mpirun_args(None)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "--mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any"
        );
        assert!(MpiHosts::default().mpirun_args(None).is_empty());
        let err = "tcp".parse::<MpiTransport>().unwrap_err();
        assert!(err.contains("\"tcp\"") && err.contains("default or ucx"), "{err}");
    }
}
