//! The comparison benchmark's command-line options, and the [`Plan`] they
//! make.

use super::plan::Plan;

/// Options of the comparison benchmark.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Runs per figure (the median is reported; targets alternate within
    /// each run). Five, as the relay issue's reference figures: on a
    /// shared machine three medians still move by ±10%.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Held connections for the idle memory figures (comma-separated; one
    /// process holds at most ~9,900 relayed connections under the 20,000
    /// file descriptor limit).
    #[arg(long, value_delimiter = ',', default_values_t = [5000, 9000])]
    idle: Vec<usize>,
    /// Leave HAProxy and NGINX out (they are measured when installed).
    #[arg(long)]
    no_peers: bool,
    /// Install HAProxy, NGINX and Python's websockets first
    /// (scripts/install-bench-peers).
    #[arg(long)]
    install_peers: bool,
    /// A small run that finishes in about a minute; docs are not updated.
    #[arg(long)]
    quick: bool,
    /// Do not update docs/benchmarks.md after a full run.
    #[arg(long)]
    no_docs: bool,
}

impl CompareArgs {
    /// What to measure: the quick check, or the full run (at least three
    /// runs, for a median that means something).
    pub fn plan(&self) -> Plan {
        if self.quick {
            Plan::quick(!self.no_peers)
        } else {
            Plan {
                runs: self.runs.max(3),
                idle: self.idle.clone(),
                peers: !self.no_peers,
                quick: false,
            }
        }
    }

    /// Whether HAProxy, NGINX and Python's websockets are installed first.
    pub fn installs_peers(&self) -> bool {
        self.install_peers
    }

    /// Whether the run updates docs/benchmarks.md: full runs only, unless
    /// told not to.
    pub fn updates_docs(&self) -> bool {
        !self.quick && !self.no_docs
    }
}
