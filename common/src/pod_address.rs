//! Where a pod is: parsed once from its configured URL, so that dialling it,
//! polling its report and naming it in logs never re-parse strings.

use std::net::SocketAddr;

use url::{Host, Url};

/// Why a pod URL was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodAddressError {
    /// Not a URL at all.
    #[error("not a valid URL: {0}")]
    Malformed(String),
    /// A scheme other than the four the balancer can dial.
    #[error("unsupported scheme {0:?}: use http, https, ws or wss")]
    Scheme(String),
    /// A URL without a host (`http:///x`).
    #[error("missing host")]
    MissingHost,
    /// Credentials, queries and fragments have no meaning for a pod address.
    #[error("must not contain {0}")]
    Extra(&'static str),
}

/// A pod's address, ready to dial and to poll.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodAddress {
    /// The URL exactly as configured; it names the pod in logs and metrics.
    pub url: String,
    /// `https`/`wss`: dial with TLS.
    pub tls: bool,
    /// Host name or IP literal (no brackets), used for DNS, SNI and checks.
    pub host: String,
    /// Port, the scheme's default when the URL has none.
    pub port: u16,
    /// `host:port` as it goes into a `Host` header (IPv6 in brackets).
    pub authority: String,
    /// Path of the pod URL without a trailing `/`, prefixed to every
    /// forwarded request path (empty for a bare `http://host:port`).
    pub path_prefix: String,
    /// Full URL of the pod's load report.
    pub metric_url: String,
    /// The socket address to dial when the host is an IP literal (most
    /// pods: DNS discovery gives addresses), so a dial neither formats nor
    /// parses an address; `None` for a host name, resolved at each dial.
    pub socket_addr: Option<SocketAddr>,
}

impl PodAddress {
    /// Parses a configured pod URL; `metric_path` is appended to form the
    /// report URL.
    pub fn parse(raw: &str, metric_path: &str) -> Result<Self, PodAddressError> {
        let url = Url::parse(raw.trim()).map_err(|e| PodAddressError::Malformed(e.to_string()))?;
        let tls = match url.scheme() {
            "http" | "ws" => false,
            "https" | "wss" => true,
            other => return Err(PodAddressError::Scheme(other.to_owned())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(PodAddressError::Extra("credentials"));
        }
        if url.query().is_some() {
            return Err(PodAddressError::Extra("a query"));
        }
        if url.fragment().is_some() {
            return Err(PodAddressError::Extra("a fragment"));
        }
        let port = url.port().unwrap_or(if tls { 443 } else { 80 });
        let (host, authority_host, socket_addr) = match url.host() {
            Some(Host::Domain(d)) if !d.is_empty() => (d.to_owned(), d.to_owned(), None),
            Some(Host::Ipv4(ip)) => (
                ip.to_string(),
                ip.to_string(),
                Some(SocketAddr::from((ip, port))),
            ),
            Some(Host::Ipv6(ip)) => (
                ip.to_string(),
                format!("[{ip}]"),
                Some(SocketAddr::from((ip, port))),
            ),
            _ => return Err(PodAddressError::MissingHost),
        };
        let path_prefix = url.path().trim_end_matches('/').to_owned();
        let http_scheme = if tls { "https" } else { "http" };
        let authority = format!("{authority_host}:{port}");
        let metric_url = format!("{http_scheme}://{authority}{path_prefix}{metric_path}");
        Ok(PodAddress {
            url: raw.trim().to_owned(),
            tls,
            host,
            port,
            authority,
            path_prefix,
            metric_url,
            socket_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_tls_schemes_with_default_ports() {
        let a = PodAddress::parse("http://backend1", "/metric").unwrap();
        assert!(!a.tls);
        assert_eq!(a.port, 80);
        assert_eq!(a.metric_url, "http://backend1:80/metric");
        let b = PodAddress::parse("wss://pod.ns.svc:8443/chat/", "/metric").unwrap();
        assert!(b.tls);
        assert_eq!(b.port, 8443);
        assert_eq!(b.path_prefix, "/chat");
        assert_eq!(b.metric_url, "https://pod.ns.svc:8443/chat/metric");
        assert_eq!(b.socket_addr, None, "a name is resolved at each dial");
    }

    #[test]
    fn an_ip_literal_is_dialled_as_parsed() {
        let a = PodAddress::parse("https://10.0.0.7", "/metric").unwrap();
        assert_eq!(a.socket_addr, Some("10.0.0.7:443".parse().unwrap()));
        let b = PodAddress::parse("ws://[::1]:9001", "/metric").unwrap();
        assert_eq!(b.socket_addr, Some("[::1]:9001".parse().unwrap()));
    }

    #[test]
    fn ipv6_authority_is_bracketed() {
        let a = PodAddress::parse("ws://[::1]:9001", "/metric").unwrap();
        assert_eq!(a.host, "::1");
        assert_eq!(a.authority, "[::1]:9001");
    }

    #[test]
    fn rejects_what_cannot_be_dialled() {
        assert_eq!(
            PodAddress::parse("ftp://x", "/metric"),
            Err(PodAddressError::Scheme("ftp".into()))
        );
        assert!(matches!(
            PodAddress::parse("not a url", "/metric"),
            Err(PodAddressError::Malformed(_))
        ));
        assert_eq!(
            PodAddress::parse("http://x:1/?a=b", "/metric"),
            Err(PodAddressError::Extra("a query"))
        );
    }
}
