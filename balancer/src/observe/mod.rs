//! What the balancer shows about itself: the [`admin`] listener's
//! endpoints (health, readiness, the JSON status, the dashboard) and the
//! Prometheus [`metrics`].

pub mod admin;
pub mod metrics;
