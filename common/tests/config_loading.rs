//! Layered config loading against real files and environment variables
//! (isolated per test by `figment::Jail`).

// figment::Jail closures must return figment::Error, which is large by design.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;
use std::time::Duration;

use common::{ConfigError, ConfigSources, Overrides};
use figment::Jail;

const ORIGINAL_YAML: &str = r#"
wsbalancer:
  metricPath: "/metric"
  pods: ["http://backend1:8080", "http://backend2:8080"]
  tlsVerify: true
  cacheTTL: "30s"
  dialTimeout: "10s"
  writeTimeout: "10s"
  readTimeout: "30s"
"#;

fn from_file(name: &str) -> ConfigSources {
    ConfigSources {
        file: Some(PathBuf::from(name)),
        overrides: Overrides::default(),
    }
}

/// Loads `body` as file `name` and returns the error's key.
fn failing_key(name: &str, body: &str) -> String {
    let mut key = String::new();
    Jail::expect_with(|jail| {
        jail.create_file(name, body)?;
        let err = from_file(name)
            .load()
            .expect_err("config should be rejected");
        key = err.key().unwrap_or("<none>").to_owned();
        assert!(err.to_string().contains(&key), "{err}");
        Ok(())
    });
    key
}

#[test]
fn original_yaml_loads_unchanged() {
    Jail::expect_with(|jail| {
        jail.create_file("wsbalancer.yaml", ORIGINAL_YAML)?;
        let c = from_file("wsbalancer.yaml").load().expect("loads");
        assert_eq!(c.pods, ["http://backend1:8080", "http://backend2:8080"]);
        assert_eq!(c.metric_path, "/metric");
        assert!(c.tls_verify);
        assert_eq!(c.cache_ttl, Duration::from_secs(30));
        assert_eq!(c.dial_timeout, Duration::from_secs(10));
        assert_eq!(c.write_timeout, Duration::from_secs(10));
        assert_eq!(c.read_timeout, Duration::from_secs(30));
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        Ok(())
    });
}

#[test]
fn toml_and_json_with_and_without_root_key() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "a.toml",
            "[wsbalancer]\npods = [\"ws://a:1\"]\ncacheTTL = \"250ms\"\n",
        )?;
        jail.create_file("b.json", r#"{"pods": ["wss://b:2"], "dialTimeout": "2s"}"#)?;
        let a = from_file("a.toml").load().expect("toml loads");
        assert_eq!(a.cache_ttl, Duration::from_millis(250));
        let b = from_file("b.json").load().expect("json loads");
        assert_eq!(b.pods, ["wss://b:2"]);
        assert_eq!(b.dial_timeout, Duration::from_secs(2));
        Ok(())
    });
}

#[test]
fn layers_file_then_env_then_flags() {
    Jail::expect_with(|jail| {
        jail.create_file("c.yaml", ORIGINAL_YAML)?;
        jail.set_env("WSB_CACHE_TTL", "5s");
        jail.set_env("WSB_DIALTIMEOUT", "3s");
        jail.set_env("WSB_PODS", "http://e1:1, http://e2:2");
        // Kubernetes-style service variables are not config keys.
        jail.set_env("WSB_SERVICE_HOST", "10.0.0.1");
        let mut sources = from_file("c.yaml");
        let env_only = sources.load().expect("loads");
        assert_eq!(env_only.cache_ttl, Duration::from_secs(5));
        assert_eq!(env_only.dial_timeout, Duration::from_secs(3));
        assert_eq!(env_only.pods, ["http://e1:1", "http://e2:2"]);

        sources
            .overrides
            .set("cacheTTL", "7s")
            .set("pods", "http://f:1");
        let flags = sources.load().expect("loads");
        assert_eq!(flags.cache_ttl, Duration::from_secs(7));
        assert_eq!(flags.dial_timeout, Duration::from_secs(3));
        assert_eq!(flags.pods, ["http://f:1"]);
        Ok(())
    });
}

#[test]
fn each_invalid_value_names_its_key() {
    let cases = [
        ("pods: [\"ftp://x:1\"]\n", "pods"),
        ("pods: []\n", "pods"),
        ("pods: [\"http://x:1\"]\ncacheTTL: \"0s\"\n", "cacheTTL"),
        (
            "pods: [\"http://x:1\"]\ndialTimeout: \"soon\"\n",
            "dialTimeout",
        ),
        ("pods: [\"http://x:1\"]\nlisten: \"nowhere\"\n", "listen"),
        (
            "pods: [\"http://x:1\"]\nadminListen: \"1.2.3.4\"\n",
            "adminListen",
        ),
        (
            "pods: [\"http://x:1\"]\ntlsVerify: \"maybe\"\n",
            "tlsVerify",
        ),
        (
            "pods: [\"http://x:1\"]\nmetricPath: \"metric\"\n",
            "metricPath",
        ),
        ("pods: [\"http://x:1\"]\ncacheTtl: \"1s\"\n", "cacheTtl"),
        ("pods: [\"http://x:1\"]\ncacheTTL: \"1ns\"\n", "cacheTTL"),
        (
            "pods: [\"http://x:1\"]\nreadTimeout: \"300000000000y\"\n",
            "readTimeout",
        ),
        (
            "pods: [\"http://x:1\"]\nmetricPath: \"/me tric\"\n",
            "metricPath",
        ),
        (
            "pods: [\"http://x:1\"]\nmetricPath: \"/m?x\"\n",
            "metricPath",
        ),
        ("pods: [\"http://x:1\", \"http://x:1/\"]\n", "pods"),
        ("pods: [\"http://x:1\"]\nejectAfter: 0\n", "ejectAfter"),
        ("pods: [\"http://x:1\"]\nreplicas: 0\n", "replicas"),
        (
            "pods: [\"http://x:1\"]\nselection: \"fastest\"\n",
            "selection",
        ),
        (
            "pods: [\"http://x:1\"]\ncaFile: \"missing.pem\"\n",
            "caFile",
        ),
        (
            "wsbalancer:\n  pods: [\"http://x:1\"]\ncacheTTL: \"0s\"\n",
            "cacheTTL",
        ),
    ];
    for (body, key) in cases {
        assert_eq!(failing_key("bad.yaml", body), key, "for {body:?}");
    }
}

#[test]
fn flag_values_are_typed_and_checked_by_key() {
    Jail::expect_with(|_| {
        let mut sources = ConfigSources::default();
        sources
            .overrides
            .set("pods", "http://a:1,http://b:2")
            .set("tlsVerify", "false")
            .set("ejectAfter", "5")
            .set("selection", "power-of-two");
        let c = sources.load().expect("loads");
        assert!(!c.tls_verify);
        assert_eq!(c.eject_after, 5);
        assert_eq!(c.selection, common::Strategy::PowerOfTwo);
        for (key, bad) in [
            ("tlsVerify", "maybe"),
            ("ejectAfter", "x"),
            ("maxConnections", "-1"),
        ] {
            let mut sources = sources.clone();
            sources.overrides.set(key, bad);
            let err = sources.load().expect_err("rejected");
            assert_eq!(err.key(), Some(key), "{err}");
        }
        Ok(())
    });
}

#[test]
fn ca_file_must_hold_a_certificate() {
    Jail::expect_with(|jail| {
        jail.create_file("junk.pem", "not a certificate")?;
        let mut sources = ConfigSources::default();
        sources
            .overrides
            .set("pods", "https://a:1")
            .set("caFile", "junk.pem");
        assert_eq!(sources.load().expect_err("junk").key(), Some("caFile"));
        Ok(())
    });
}

#[test]
fn missing_pods_without_file_names_pods() {
    Jail::expect_with(|_| {
        let err = ConfigSources::default().load().expect_err("no pods");
        assert_eq!(err.key(), Some("pods"));
        Ok(())
    });
}

#[test]
fn file_problems_name_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file("x.ini", "pods=1")?;
        jail.create_file("broken.yaml", "wsbalancer: [unclosed")?;
        for name in ["missing.yaml", "x.ini", "broken.yaml"] {
            match from_file(name).load() {
                Err(ConfigError::File { path, .. }) => assert_eq!(path, PathBuf::from(name)),
                other => panic!("{name}: {other:?}"),
            }
        }
        Ok(())
    });
}

#[test]
fn discovery_replaces_pods_and_is_checked_key_by_key() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "d.yaml",
            "wsbalancer:\n  discovery: { dns: \"chat.svc\", port: 8080 }\n",
        )?;
        let config = from_file("d.yaml").load().expect("valid without pods");
        let discovery = config.discovery.expect("discovery");
        assert_eq!(discovery.scheme, "http");
        assert_eq!(discovery.interval, Duration::from_secs(5));
        assert_eq!(discovery.nameserver, None);
        Ok(())
    });
    let cases = [
        (
            "pods: [\"http://a:1\"]\n  discovery: { dns: x, port: 1 }",
            "discovery",
        ),
        ("discovery: { dns: \"\", port: 1 }", "discovery.dns"),
        ("discovery: { dns: x, port: 0 }", "discovery.port"),
        (
            "discovery: { dns: x, port: 1, scheme: ftp }",
            "discovery.scheme",
        ),
        (
            "discovery: { dns: x, port: 1, interval: 1ms }",
            "discovery.interval",
        ),
    ];
    for (body, key) in cases {
        let yaml = format!("wsbalancer:\n  {body}\n");
        assert_eq!(failing_key("c.yaml", &yaml), key, "{body}");
    }
}

#[test]
fn rebalance_keys_default_and_load_from_every_layer() {
    Jail::expect_with(|jail| {
        let defaults = ConfigSources {
            file: None,
            overrides: {
                let mut o = Overrides::default();
                o.set("pods", "http://a:1");
                o
            },
        };
        let c = defaults.load().expect("defaults are valid");
        assert!(!c.rebalance);
        assert_eq!(c.rebalance_tolerance, 0.1);
        assert_eq!(c.rebalance_rate, 20);
        assert_eq!(c.rebalance_min_age, Duration::from_secs(30));
        assert_eq!(c.rebalance_close_code, 1012);

        jail.create_file(
            "r.yaml",
            "wsbalancer:\n  pods: [\"http://a:1\"]\n  rebalance: true\n  \
             rebalanceTolerance: 0.2\n  rebalanceMinAge: 1m\n",
        )?;
        let file = from_file("r.yaml").load().expect("loads");
        assert!(file.rebalance);
        assert_eq!(file.rebalance_tolerance, 0.2);
        assert_eq!(file.rebalance_min_age, Duration::from_secs(60));

        jail.set_env("WSB_REBALANCE_TOLERANCE", "0.3");
        jail.set_env("WSB_REBALANCE_RATE", "50");
        let env = from_file("r.yaml").load().expect("loads");
        assert_eq!(env.rebalance_tolerance, 0.3);
        assert_eq!(env.rebalance_rate, 50);

        // Flag text is typed by the key's kind: a float, an integer (a
        // whole tolerance is a float too), a bool.
        let mut flags = from_file("r.yaml");
        flags
            .overrides
            .set("rebalance", "false")
            .set("rebalanceTolerance", "1")
            .set("rebalanceCloseCode", "4321");
        let flags = flags.load().expect("loads");
        assert!(!flags.rebalance);
        assert_eq!(flags.rebalance_tolerance, 1.0);
        assert_eq!(flags.rebalance_close_code, 4321);
        let mut fractional = from_file("r.yaml");
        fractional.overrides.set("rebalanceTolerance", "0.05");
        let fractional = fractional.load().expect("loads");
        assert_eq!(fractional.rebalance_tolerance, 0.05);
        Ok(())
    });
}

#[test]
fn each_invalid_rebalance_value_names_its_key() {
    let cases = [
        ("rebalance: \"sometimes\"", "rebalance"),
        ("rebalanceTolerance: 0", "rebalanceTolerance"),
        ("rebalanceTolerance: -0.1", "rebalanceTolerance"),
        ("rebalanceTolerance: 1.5", "rebalanceTolerance"),
        ("rebalanceTolerance: .nan", "rebalanceTolerance"),
        ("rebalanceTolerance: \"a lot\"", "rebalanceTolerance"),
        ("rebalanceRate: 0", "rebalanceRate"),
        ("rebalanceRate: -5", "rebalanceRate"),
        ("rebalanceRate: 2.5", "rebalanceRate"),
        ("rebalanceMinAge: \"soon\"", "rebalanceMinAge"),
        ("rebalanceMinAge: \"300000000000y\"", "rebalanceMinAge"),
        ("rebalanceMinAge: \"2y\"", "rebalanceMinAge"),
        ("rebalanceCloseCode: 1000", "rebalanceCloseCode"),
        ("rebalanceCloseCode: 1001", "rebalanceCloseCode"),
        ("rebalanceCloseCode: 5000", "rebalanceCloseCode"),
        ("rebalanceCloseCode: 70000", "rebalanceCloseCode"),
    ];
    for (line, key) in cases {
        let body = format!("pods: [\"http://x:1\"]\n{line}\n");
        assert_eq!(failing_key("bad.yaml", &body), key, "for {line:?}");
    }
    // The same refusals from flags, whose text is typed by the key's kind.
    Jail::expect_with(|_| {
        for (key, bad) in [
            ("rebalance", "maybe"),
            ("rebalanceTolerance", "x"),
            ("rebalanceTolerance", "0"),
            ("rebalanceRate", "0"),
            ("rebalanceMinAge", "5"),
            ("rebalanceCloseCode", "1"),
        ] {
            let mut sources = ConfigSources::default();
            sources.overrides.set("pods", "http://a:1").set(key, bad);
            let err = sources.load().expect_err("rejected");
            assert_eq!(err.key(), Some(key), "{key}={bad}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
        Ok(())
    });
}
