//! wsbalancer: a WebSocket connection balancer. Each new connection goes to
//! the pod with the fewest active connections, as the pods report them, and
//! is relayed for its whole life.
//!
//! The crate is four folders, one per question a reader asks, and the file
//! that wires them:
//!
//! - `connection/`: **the path of one connection**, in the order it takes.
//!   `listener` accepts it (and `listener_tls` terminates TLS), then
//!   `first_request` reads its head (`head`), `handshake` checks it,
//!   `admission` applies the balancer's limits, `failover` dials the ranked
//!   pods in turn (`dial`, with the head `forward` rewrote, over `pod_tls`),
//!   and `session` relays it (`relay`, over its two `ends`) until it ends
//!   and logs how. `upgrade` is the step that strings these together;
//!   `http_proxy` serves the plain HTTP requests that arrive instead;
//!   `shared` is what every connection reads from the running balancer.
//! - `pods/`: **what the balancer knows about pods**: the `registry` of
//!   `pod`s and their `condition`, kept fresh by the `poller` and changed by
//!   `discovery`.
//! - `observe/`: **what it shows**: the `admin` endpoints (with the
//!   dashboard) and the `metrics` (`counters` the data path writes to, and
//!   the `scrape` side that reads the registry).
//! - `control/`: **how it is controlled**: the `cli`, `logging`, config
//!   `reload` and `cert_reload` of the listener's certificate.
//! - `server`: [`Balancer`], which starts all of the above and reloads,
//!   drains and stops them.
//!
//! The modules are private: what the binary, the tests and the fuzz targets
//! need is re-exported here, and [`wire`] gathers the parsers and writers
//! that face the network, for fuzzing.

#![warn(missing_docs)]

mod connection;
mod control;
mod observe;
mod pods;
mod server;

pub use connection::failover::MAX_ATTEMPTS;
pub use connection::relay::CLOSE_LINGER;
pub use control::cli::{CheckConfigError, Cli, REDACTED, check_config, effective_config_yaml};
pub use control::descriptors::{
    DescriptorError, Descriptors, raise_to_hard as raise_descriptor_limit,
};
pub use control::logging::{LogFormat, init as init_logging};
pub use control::reload::{ReloadError, ReloadReport, file_changes};
pub use pods::condition::Condition;
pub use pods::pod::{Pod, PodSnapshot};
pub use pods::registry::PodRegistry;
pub use server::{Balancer, DrainReport, StartError};

/// What the balancer parses and writes on the wire (request and response
/// heads, the handshake check, the pod dial's exchange, forwarded heads):
/// everything a client or a pod can feed it before the relay starts. Public
/// so that `fuzz/` and the parser tests drive the very code the data path
/// runs.
pub mod wire {
    pub use crate::connection::dial::{
        DialError, MAX_STATUS_BODY, PodAnswer, accept_key, decode_chunked, handshake,
    };
    pub use crate::connection::first_request::{FirstRequest, read as read_first_request};
    pub use crate::connection::forward::{
        ForwardPolicy, Origin, pod_status, pod_upgrade_head, switching_protocols,
        switching_protocols_head,
    };
    pub use crate::connection::handshake::{Rejection, check as check_handshake};
    pub use crate::connection::head::{MAX_FIELDS, ParsedRequest, RequestHead, ResponseHead};
}
