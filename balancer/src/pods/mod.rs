//! What the balancer knows about pods, and how it keeps that fresh.
//!
//! - [`pod`]: one pod: its last report, this balancer's own opens and
//!   closes since, its health, and the [`pod::Lease`] a connection holds.
//! - [`settings`]: the selection settings a reload replaces whole.
//! - [`figures`]: effective load, staleness, health and warm-up of a pod at
//!   one moment, for rankings and snapshots alike.
//! - [`select_cell`]: what selection reads of a pod, published for
//!   lock-free reads on every new connection.
//! - [`condition`]: a pod's state in one word, and each change of it.
//! - [`registry`]: the set of pods, ranked for a new connection.
//! - [`replicas`]: how many balancer replicas share the pods, learned from
//!   the reports.
//! - [`poller`]: the background polls of every pod's `/metric` report.
//! - [`discovery`]: the pod set from DNS (a headless Service).
//!
//! - [`rebalancer`]: live rebalancing rounds, which ask pods' relays to
//!   move some connections through each pod's [`shed`] signal.
//!
//! Everything here is read by the connection path and written in the
//! background; nothing here dials a client's connection or relays bytes.

pub mod condition;
pub mod discovery;
pub mod figures;
pub mod pod;
pub mod poller;
pub mod rebalancer;
pub mod registry;
pub mod replicas;
pub mod select_cell;
pub mod settings;
pub mod shed;
