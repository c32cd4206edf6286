//! What every task does with processes, written once: start a child and
//! wait for its `ready` lines, stopping all of them when the task ends
//! ([`Procs`], [`with_procs`]); start echo pods ([`start_pods`]) and a
//! balancer in front of them ([`start_balancer`]); hand a child a free
//! port and read an admin or `/metric` endpoint ([`free_port`],
//! [`http_get`]); wait for a condition with a deadline ([`poll`]); and
//! probe a child's memory, CPU and descriptors under `/proc`. The demo,
//! both benchmarks and the soak are written on top of it, so each reads as
//! the steps of its scenario.

mod balancer;
mod bins;
mod net;
mod pods;
mod probes;
mod procs;
mod wait;

pub use balancer::{Balancer, start_balancer, start_balancer_from};
pub use bins::{bin, pinned, use_bin_dir, workspace_root};
pub use net::{free_port, http_get};
pub use pods::{Pod, pod_connections, pod_counts, spread, start_pod, start_pods};
pub use probes::{cpu_seconds, fd_count, rss_kib};
pub use procs::{Procs, field, output, status, with_procs};
pub use wait::poll;
