//! What the comparison measures: how many runs, which loads (test-client
//! arguments) for the connection and echo figures, and which idle levels.

/// What to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Runs per figure.
    pub runs: usize,
    /// Held connections for each idle memory figure.
    pub idle: Vec<usize>,
    /// Include HAProxy and NGINX when installed.
    pub peers: bool,
    /// Smaller loads, for a check that finishes in about a minute.
    pub quick: bool,
}

/// One echo scenario: its name in the table and its test-client arguments.
pub type Echo = (&'static str, Vec<String>);

impl Plan {
    /// The quick check: one run of small loads.
    pub fn quick(peers: bool) -> Self {
        Plan {
            runs: 1,
            idle: vec![500],
            peers,
            quick: true,
        }
    }

    /// Connections opened and closed in the connections/s scenario.
    pub fn conn_count(&self) -> usize {
        if self.quick { 1000 } else { 20_000 }
    }

    /// test-client arguments of the connections/s scenario.
    pub fn conns(&self) -> Vec<String> {
        args(self.conn_count(), 64, 0, 16)
    }

    /// The echo scenarios.
    pub fn echoes(&self) -> [Echo; 2] {
        // Full runs last a few seconds per phase: shorter ones are mostly
        // noise on a shared machine.
        let (small, large) = if self.quick { (100, 10) } else { (3000, 1600) };
        [
            ("echo 64 conns x 128 B", args(64, 64, small, 128)),
            ("echo 8 conns x 64 KiB", args(8, 8, large, 65536)),
        ]
    }
}

/// test-client arguments: `connections` at `concurrency`, `messages` of
/// `size` bytes each, closed loop, closed at once.
pub fn args(connections: usize, concurrency: usize, messages: usize, size: usize) -> Vec<String> {
    [
        "--connections",
        &connections.to_string(),
        "--concurrency",
        &concurrency.to_string(),
        "--messages",
        &messages.to_string(),
        "--size",
        &size.to_string(),
        "--hold",
        "0s",
        "--quiet",
    ]
    .map(str::to_owned)
    .to_vec()
}
