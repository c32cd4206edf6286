//! The path of one client connection, from accept to close. The modules
//! are listed in the order a connection meets them:
//!
//! 1. [`listener`] accepts the TCP connection ([`listener_tls`] terminates
//!    TLS when configured) and runs the per-connection task; out of file
//!    descriptors, it answers 503 through a spare one
//!    ([`out_of_descriptors`]).
//! 2. [`first_request`] reads the request head ([`head`] keeps it as the
//!    bytes that arrived); anything but a WebSocket upgrade goes to hyper.
//! 3. [`upgrade`] answers the upgrade: [`handshake`] checks it is valid,
//!    [`admission`] applies drain, `rateLimit` ([`rate_limit`]),
//!    `allowedOrigins` and `maxConnections`, and [`failover`] dials the
//!    ranked pods in turn ([`dial`] over [`pod_tls`], with the head
//!    [`forward`] rewrote) until one answers. A refusal is a
//!    [`refusal::Refused`].
//! 4. [`session`] relays the connection in a task of its own ([`relay`],
//!    over its two [`ends`]) and logs its one "connection closed" line.
//!
//! [`http_proxy`] serves plain HTTP requests (`httpMode: proxy`) instead of
//! step 3, over the pooled [`pod_client`]. On a TLS connection that picked
//! `h2`, [`http2`] serves steps 2 and 3 for each stream: an extended
//! CONNECT becomes the same upgrade toward the pod. [`shared`] is what every connection reads from the running
//! balancer, and [`settings`] the part of it a reload swaps.

pub mod admission;
pub mod dial;
pub mod ends;
pub mod failover;
pub mod first_request;
pub mod forward;
pub mod handshake;
pub mod head;
pub mod http2;
pub mod http_proxy;
pub mod listener;
pub mod listener_tls;
pub mod liveness;
pub mod out_of_descriptors;
pub mod pod_client;
pub mod pod_tls;
pub mod rate_limit;
pub mod refusal;
pub mod relay;
pub mod session;
pub mod settings;
pub mod shared;
pub mod upgrade;
