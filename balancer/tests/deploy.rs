//! The deployment files cannot run here (no cluster, no Docker), so these
//! tests hold them to the code instead: every manifest parses, the
//! kustomization lists them all, the ConfigMap passes `wsbalancer
//! --check-config` with the container's own arguments, probes hit routes the
//! admin listener serves on the port it listens on, ports, names and labels
//! line up between Deployments, Services, the PodDisruptionBudget and Traefik,
//! and the grace period covers the drain.
//!
//! Every assertion names the file, the object and the field it is about.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

const BIN: &str = env!("CARGO_BIN_EXE_wsbalancer");

/// The balancer's objects (Deployment, Service, ConfigMap, PDB) are all
/// named this.
const BALANCER: &str = "wsbalancer";
/// The example backend's Deployment and headless Service.
const BACKEND: &str = "chat-backend";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the balancer crate sits in the workspace")
        .to_owned()
}

fn kubernetes_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

fn traefik_dir() -> PathBuf {
    repo_root().join("deploy/traefik")
}

/// One YAML document of a file under `deploy/`.
struct Doc {
    /// Path relative to the repository root, for messages.
    file: String,
    value: Value,
}

impl Doc {
    /// `file Kind/name`, for messages.
    fn what(&self) -> String {
        format!(
            "{} {}/{}",
            self.file,
            self.value["kind"].as_str().unwrap_or("?"),
            self.value["metadata"]["name"].as_str().unwrap_or("?")
        )
    }

    /// The value at a dotted path (`spec.template.spec`); fails naming the
    /// file, object and path when it is missing.
    fn at(&self, path: &str) -> &Value {
        lookup(&self.value, path).unwrap_or_else(|| panic!("{}: no `{path}`", self.what()))
    }

    fn str_at(&self, path: &str) -> &str {
        self.at(path)
            .as_str()
            .unwrap_or_else(|| panic!("{}: `{path}` is not a string", self.what()))
    }

    fn u64_at(&self, path: &str) -> u64 {
        self.at(path)
            .as_u64()
            .unwrap_or_else(|| panic!("{}: `{path}` is not a whole number", self.what()))
    }
}

/// `a.b.c` in a YAML value; `None` when a step is missing or null.
fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(value, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

/// Every YAML document of every `.yaml`/`.yml` file in `dir`.
fn load_dir(dir: &Path) -> Vec<Doc> {
    let mut docs = Vec::new();
    for path in yaml_files(dir) {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        for (i, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: document {i} is not YAML: {e}"));
            if !value.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    docs
}

/// The YAML files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    files
}

/// The one object of `kind` named `name` among `docs`.
fn find<'d>(docs: &'d [Doc], kind: &str, name: &str) -> &'d Doc {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.value["kind"].as_str() == Some(kind))
        .filter(|d| d.value["metadata"]["name"].as_str() == Some(name))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}/{name} under deploy/, found {}",
        found.len()
    );
    found[0]
}

/// The container called `name` in a Deployment.
fn container<'d>(deployment: &'d Doc, name: &str) -> &'d Value {
    deployment
        .at("spec.template.spec.containers")
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| {
            panic!(
                "{}: no container `{name}` in spec.template.spec.containers",
                deployment.what()
            )
        })
}

/// A probe's or Service's port (a number or a port name) as the container
/// port number it means.
fn container_port(deployment: &Doc, container: &Value, port: &Value, field: &str) -> u64 {
    let ports = container["ports"].as_sequence().into_iter().flatten();
    let found = match port {
        Value::Number(n) => ports
            .filter_map(|p| p["containerPort"].as_u64())
            .find(|p| Some(*p) == n.as_u64()),
        Value::String(name) => ports
            .filter(|p| p["name"].as_str() == Some(name))
            .find_map(|p| p["containerPort"].as_u64()),
        _ => None,
    };
    found.unwrap_or_else(|| {
        panic!(
            "{}: `{field}` is {port:?}, which is not a port of container {:?}",
            deployment.what(),
            container["name"]
        )
    })
}

/// The port number of the container port named `name`.
fn named_port(deployment: &Doc, container: &Value, name: &str) -> u64 {
    container_port(
        deployment,
        container,
        &Value::from(name),
        &format!("containers[].ports[name={name}]"),
    )
}

/// What `wsbalancer --check-config` printed for the ConfigMap's config file,
/// run with the balancer container's own arguments and environment (its
/// `--config PATH` turned into `--check-config` on a copy of the file).
struct Effective {
    /// The keys under `wsbalancer:`.
    config: Value,
    /// The file name under the mount (`wsbalancer.yaml`).
    file_name: String,
}

impl Effective {
    fn get(&self, key: &str) -> &Value {
        self.config.get(key).unwrap_or_else(|| {
            panic!("wsbalancer --check-config on the ConfigMap printed no `{key}`")
        })
    }

    fn duration(&self, key: &str) -> Duration {
        let text = self
            .get(key)
            .as_str()
            .unwrap_or_else(|| panic!("effective config: `{key}` is not a duration string"));
        humantime::parse_duration(text)
            .unwrap_or_else(|e| panic!("effective config: `{key}` = {text:?}: {e}"))
    }

    fn addr(&self, key: &str) -> SocketAddr {
        let text = self.get(key).as_str().unwrap_or_default();
        text.parse()
            .unwrap_or_else(|e| panic!("effective config: `{key}` = {text:?}: {e}"))
    }
}

/// The container's args as strings.
fn args(deployment: &Doc, container: &Value) -> Vec<String> {
    container["args"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{}: container has no `args`", deployment.what()))
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap_or_else(|| panic!("{}: args: {a:?} is not a string", deployment.what()))
                .to_owned()
        })
        .collect()
}

/// The value following `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn effective_config(docs: &[Doc]) -> Effective {
    let deployment = find(docs, "Deployment", BALANCER);
    let container = container(deployment, BALANCER);
    let mut args = args(deployment, container);
    let config_at = args
        .iter()
        .position(|a| a == "--config")
        .unwrap_or_else(|| panic!("{}: container args have no --config", deployment.what()));
    let config_path = args
        .get(config_at + 1)
        .unwrap_or_else(|| panic!("{}: --config without a path", deployment.what()))
        .clone();
    let file_name = Path::new(&config_path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("{}: --config {config_path:?}", deployment.what()))
        .to_owned();
    let configmap = find(docs, "ConfigMap", BALANCER);
    let text = configmap
        .at("data")
        .get(&file_name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{}: no data.{file_name:?}", configmap.what()));

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(&file_name);
    std::fs::write(&copy, text).unwrap();
    args[config_at] = "--check-config".to_owned();
    args[config_at + 1] = copy.display().to_string();

    let mut command = Command::new(BIN);
    command.args(&args).env_clear().stdin(Stdio::null());
    for var in container["env"].as_sequence().into_iter().flatten() {
        if let (Some(name), Some(value)) = (var["name"].as_str(), var["value"].as_str()) {
            command.env(name, value);
        }
    }
    let out = support::run_within(&mut command, support::DEADLINE, "wsbalancer --check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}: data.{file_name} with the container args {args:?} fails \
         `wsbalancer --check-config`: {}",
        configmap.what(),
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_yaml::from_str(&stdout).unwrap();
    Effective {
        config: printed
            .get("wsbalancer")
            .expect("--check-config prints under `wsbalancer:`")
            .clone(),
        file_name,
    }
}

/// Template labels of a Deployment.
fn template_labels(deployment: &Doc) -> &serde_yaml::Mapping {
    deployment
        .at("spec.template.metadata.labels")
        .as_mapping()
        .unwrap_or_else(|| panic!("{}: template labels are not a map", deployment.what()))
}

/// Whether every `selector` label is among `labels`.
fn selects(selector: &Value, labels: &serde_yaml::Mapping) -> bool {
    selector
        .as_mapping()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn every_manifest_parses_as_yaml() {
    let deploy = repo_root().join("deploy");
    let mut checked = 0;
    for file in files_under(&deploy) {
        let dir = file.parent().unwrap();
        // Nothing but YAML, so nothing the checks below would skip.
        assert!(
            yaml_files(dir).contains(&file),
            "{}: not a .yaml file, so not checked",
            file.display()
        );
        checked += 1;
    }
    let mut documents = 0;
    for dir in [kubernetes_dir(), traefik_dir()] {
        for doc in load_dir(&dir) {
            documents += 1;
            if doc.value.get("apiVersion").is_some() {
                assert!(
                    doc.value["kind"].as_str().is_some(),
                    "{}: a manifest without `kind`",
                    doc.file
                );
                assert!(
                    doc.value["metadata"]["name"].as_str().is_some()
                        || doc.value["kind"] == "Kustomization",
                    "{}: a manifest without `metadata.name`",
                    doc.what()
                );
            }
        }
    }
    assert_eq!(
        yaml_files(&kubernetes_dir()).len() + yaml_files(&traefik_dir()).len(),
        checked,
        "deploy/ holds files outside deploy/kubernetes and deploy/traefik, which no check reads"
    );
    assert!(documents >= 10, "only {documents} documents under deploy/");
}

#[test]
fn kustomization_lists_every_file() {
    let dir = kubernetes_dir();
    let docs = load_dir(&dir);
    let kustomization = docs
        .iter()
        .find(|d| d.file.ends_with("kustomization.yaml"))
        .expect("deploy/kubernetes/kustomization.yaml");
    let listed: Vec<&str> = kustomization
        .at("resources")
        .as_sequence()
        .expect("resources is a list")
        .iter()
        .map(|r| r.as_str().expect("resources are file names"))
        .collect();
    let listed_set: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(
        listed.len(),
        listed_set.len(),
        "{}: `resources` lists a file twice",
        kustomization.file
    );
    let present: BTreeSet<String> = yaml_files(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    for file in &present {
        assert!(
            listed_set.contains(file.as_str()),
            "{}: `resources` misses {file}",
            kustomization.file
        );
    }
    for file in &listed_set {
        assert!(
            present.contains(*file),
            "{}: `resources` lists {file}, which is not in deploy/kubernetes",
            kustomization.file
        );
    }
}

#[test]
fn configmap_passes_check_config_with_the_container_args() {
    let docs = load_dir(&kubernetes_dir());
    let effective = effective_config(&docs);
    let deployment = find(&docs, "Deployment", BALANCER);
    let container = container(deployment, BALANCER);

    for (key, port_name) in [("listen", "ws"), ("adminListen", "admin")] {
        let addr = effective.addr(key);
        // The kubelet and Services reach the pod IP, never its loopback.
        assert!(
            addr.ip().is_unspecified(),
            "ConfigMap {BALANCER}: `{key}` is {addr}: must listen on all interfaces (0.0.0.0)"
        );
        assert_eq!(
            u64::from(addr.port()),
            named_port(deployment, container, port_name),
            "{}: container port `{port_name}` differs from the ConfigMap's `{key}`",
            deployment.what()
        );
    }

    let replicas = deployment.u64_at("spec.replicas");
    assert!(
        replicas >= 2,
        "{}: spec.replicas is {replicas}: at least 2",
        deployment.what()
    );
}

#[test]
fn configmap_discovers_the_headless_service_and_needs_no_replica_count() {
    let docs = load_dir(&kubernetes_dir());
    let effective = effective_config(&docs);
    let discovery = effective.get("discovery");
    let dns = discovery["dns"]
        .as_str()
        .expect("ConfigMap: discovery.dns is a name");
    // The Service named by the first label of the name, in this folder.
    let service_name = dns.split('.').next().unwrap_or_default();
    let service = find(&docs, "Service", service_name);
    assert_eq!(
        service.str_at("spec.clusterIP"),
        "None",
        "{}: discovery must resolve a headless Service (one record per pod)",
        service.what()
    );
    let ports = service.at("spec.ports").as_sequence().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p["port"].as_u64() == discovery["port"].as_u64()),
        "{}: no port {:?} for discovery.port",
        service.what(),
        discovery["port"]
    );
    assert_eq!(
        effective.get("pods").as_sequence().map(Vec::len),
        Some(0),
        "ConfigMap {BALANCER}: with discovery, no static pod list"
    );
    // Replicas learn how many they are: a fixed count is wrong whenever
    // an autoscaler or a rollout changes it.
    assert_eq!(
        effective.get("replicas").as_u64(),
        Some(1),
        "ConfigMap {BALANCER}: leave `replicas` out (the default)"
    );
    let configmap = find(&docs, "ConfigMap", BALANCER);
    let text = configmap.at("data")[effective.file_name.as_str()]
        .as_str()
        .unwrap_or_default();
    for stale in ["does not balance", "once the config accepts", "replicas:"] {
        assert!(
            !text.contains(stale),
            "ConfigMap {BALANCER}: stale text {stale:?} in data.{}",
            effective.file_name
        );
    }
}

#[tokio::test]
async fn probes_hit_admin_routes_on_the_admin_port() {
    let docs = load_dir(&kubernetes_dir());
    let effective = effective_config(&docs);
    let deployment = find(&docs, "Deployment", BALANCER);
    let container = container(deployment, BALANCER);
    let admin_port = u64::from(effective.addr("adminListen").port());

    let pods = support::pods(1).await;
    let balancer = support::balancer_for(&pods).await;
    for (probe, expected) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let field = format!("containers[{BALANCER}].{probe}.httpGet");
        let get = &container[probe]["httpGet"];
        let path = get["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no {field}.path", deployment.what()));
        let port = container_port(
            deployment,
            container,
            &get["port"],
            &format!("{field}.port"),
        );
        assert_eq!(
            port,
            admin_port,
            "{}: {field}.port is not the ConfigMap's adminListen port",
            deployment.what()
        );
        let response = support::plain_get(balancer.admin_addr(), path).await;
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.1 503"),
            "{}: {field}.path {path} is not served by the admin listener: {response}",
            deployment.what()
        );
        // Served, and the right one: liveness must not be readiness (a
        // draining pod would be restarted), nor the other way round.
        assert_eq!(
            path,
            expected,
            "{}: {field}.path must be {expected}",
            deployment.what()
        );
    }
    // The check above can fail: a path the admin router does not serve.
    let unknown = support::plain_get(balancer.admin_addr(), "/not-a-probe").await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    balancer.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn grace_period_covers_prestop_and_drain() {
    let docs = load_dir(&kubernetes_dir());
    let effective = effective_config(&docs);
    let deployment = find(&docs, "Deployment", BALANCER);
    let container = container(deployment, BALANCER);
    let grace =
        Duration::from_secs(deployment.u64_at("spec.template.spec.terminationGracePeriodSeconds"));
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .map(Duration::from_secs)
        .unwrap_or_else(|| {
            panic!(
                "{}: containers[{BALANCER}].lifecycle.preStop.sleep.seconds is missing",
                deployment.what()
            )
        });
    assert!(
        pre_stop >= Duration::from_secs(1),
        "{}: preStop sleep of {pre_stop:?} leaves no time for endpoints to update",
        deployment.what()
    );
    let drain_window = effective.duration("drainWindow");
    let drain_timeout = effective.duration("drainTimeout");
    assert!(
        drain_window < drain_timeout,
        "ConfigMap {BALANCER}: drainWindow {drain_window:?} must end before drainTimeout {drain_timeout:?}"
    );
    assert!(
        grace > pre_stop + drain_timeout,
        "{}: terminationGracePeriodSeconds ({grace:?}) must exceed the preStop sleep \
         ({pre_stop:?}) + the ConfigMap's drainTimeout ({drain_timeout:?})",
        deployment.what()
    );
}

#[test]
fn services_select_their_deployments_and_target_container_ports() {
    let docs = load_dir(&kubernetes_dir());
    for (name, container_name) in [(BALANCER, BALANCER), (BACKEND, "test-server")] {
        let deployment = find(&docs, "Deployment", name);
        let service = find(&docs, "Service", name);
        let container = container(deployment, container_name);
        assert!(
            selects(service.at("spec.selector"), template_labels(deployment)),
            "{}: spec.selector does not select the pods of {}",
            service.what(),
            deployment.what()
        );
        assert!(
            selects(
                deployment.at("spec.selector.matchLabels"),
                template_labels(deployment)
            ),
            "{}: spec.selector.matchLabels does not match the template labels",
            deployment.what()
        );
        let ports = service.at("spec.ports").as_sequence().unwrap();
        assert!(!ports.is_empty(), "{}: no spec.ports", service.what());
        for (i, port) in ports.iter().enumerate() {
            let target = port.get("targetPort").unwrap_or(&port["port"]);
            container_port(
                deployment,
                container,
                target,
                &format!("{} spec.ports[{i}].targetPort", service.what()),
            );
        }
    }
    // The balancer's Service carries both the WebSocket and the admin port.
    let service = find(&docs, "Service", BALANCER);
    let deployment = find(&docs, "Deployment", BALANCER);
    let container = container(deployment, BALANCER);
    let targets: BTreeSet<u64> = service
        .at("spec.ports")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| container_port(deployment, container, &p["targetPort"], "targetPort"))
        .collect();
    for name in ["ws", "admin"] {
        assert!(
            targets.contains(&named_port(deployment, container, name)),
            "{}: no spec.ports entry targets the `{name}` container port",
            service.what()
        );
    }
    let backend = find(&docs, "Service", BACKEND);
    assert_eq!(
        backend.str_at("spec.clusterIP"),
        "None",
        "{}: spec.clusterIP must be None (headless: one DNS record per pod)",
        backend.what()
    );
}

#[test]
fn pdb_covers_the_balancer_and_allows_one_disruption() {
    let docs = load_dir(&kubernetes_dir());
    let deployment = find(&docs, "Deployment", BALANCER);
    let pdb = find(&docs, "PodDisruptionBudget", BALANCER);
    assert!(
        selects(
            pdb.at("spec.selector.matchLabels"),
            template_labels(deployment)
        ),
        "{}: spec.selector.matchLabels does not select the pods of {}",
        pdb.what(),
        deployment.what()
    );
    let replicas = deployment.u64_at("spec.replicas");
    // A budget that allows no disruption blocks node drains for good.
    match (
        lookup(&pdb.value, "spec.maxUnavailable"),
        lookup(&pdb.value, "spec.minAvailable"),
    ) {
        (Some(max), None) => assert!(
            max.as_u64().is_some_and(|m| m >= 1),
            "{}: spec.maxUnavailable must be a number >= 1",
            pdb.what()
        ),
        (None, Some(min)) => assert!(
            min.as_u64().is_some_and(|m| m >= 1 && m < replicas),
            "{}: spec.minAvailable must be between 1 and spec.replicas - 1",
            pdb.what()
        ),
        _ => panic!(
            "{}: set exactly one of spec.maxUnavailable and spec.minAvailable",
            pdb.what()
        ),
    }
}

#[test]
fn containers_run_locked_down() {
    let docs = load_dir(&kubernetes_dir());
    for (name, container_name) in [(BALANCER, BALANCER), (BACKEND, "test-server")] {
        let deployment = find(&docs, "Deployment", name);
        let container = container(deployment, container_name);
        let pod = deployment.at("spec.template.spec.securityContext");
        let security = &container["securityContext"];
        let field = format!("containers[{container_name}].securityContext");
        // The container's setting wins over the pod's.
        let non_root = security
            .get("runAsNonRoot")
            .filter(|v| !v.is_null())
            .unwrap_or(&pod["runAsNonRoot"]);
        assert_eq!(
            non_root,
            &Value::Bool(true),
            "{}: {field}.runAsNonRoot (or the pod's) is not true",
            deployment.what()
        );
        assert_eq!(
            security["readOnlyRootFilesystem"],
            Value::Bool(true),
            "{}: {field}.readOnlyRootFilesystem",
            deployment.what()
        );
        assert_eq!(
            security["allowPrivilegeEscalation"],
            Value::Bool(false),
            "{}: {field}.allowPrivilegeEscalation",
            deployment.what()
        );
        let drops_all = security["capabilities"]["drop"]
            .as_sequence()
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
        assert!(
            drops_all,
            "{}: {field}.capabilities.drop must hold ALL",
            deployment.what()
        );
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                if kind == "limits" && resource == "cpu" && name == BACKEND {
                    continue;
                }
                assert!(
                    !container["resources"][kind][resource].is_null(),
                    "{}: containers[{container_name}].resources.{kind}.{resource} is missing",
                    deployment.what()
                );
            }
        }
    }
}

#[test]
fn config_is_mounted_where_the_args_point() {
    let docs = load_dir(&kubernetes_dir());
    let effective = effective_config(&docs);
    let deployment = find(&docs, "Deployment", BALANCER);
    let container = container(deployment, BALANCER);
    let args = args(deployment, container);
    let config_path = flag_value(&args, "--config")
        .unwrap_or_else(|| panic!("{}: args have no --config PATH", deployment.what()));
    assert_eq!(
        config_path,
        "/etc/wsbalancer/wsbalancer.yaml",
        "{}: containers[{BALANCER}].args --config",
        deployment.what()
    );
    let mount = container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|dir| Path::new(config_path).parent() == Some(Path::new(dir)))
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: no volumeMount at the directory of --config {config_path}",
                deployment.what()
            )
        });
    // A subPath mount is never updated when the ConfigMap changes.
    assert!(
        mount.get("subPath").is_none(),
        "{}: the config volumeMount must not use subPath",
        deployment.what()
    );
    let volume_name = mount["name"].as_str().unwrap();
    let volume = deployment
        .at("spec.template.spec.volumes")
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"].as_str() == Some(volume_name))
        .unwrap_or_else(|| {
            panic!(
                "{}: volumeMount {volume_name} has no volume",
                deployment.what()
            )
        });
    assert_eq!(
        volume["configMap"]["name"].as_str(),
        Some(BALANCER),
        "{}: volume {volume_name} is not ConfigMap {BALANCER}",
        deployment.what()
    );
    // effective_config read data.<file name of --config>; this is the name.
    assert_eq!(
        Path::new(config_path).file_name().and_then(|n| n.to_str()),
        Some(effective.file_name.as_str())
    );
}

#[test]
fn backend_serves_what_the_balancer_polls() {
    let docs = load_dir(&kubernetes_dir());
    let effective = effective_config(&docs);
    let deployment = find(&docs, "Deployment", BACKEND);
    let container = container(deployment, "test-server");
    let service = find(&docs, "Service", BACKEND);
    let args = args(deployment, container);

    let listen: SocketAddr = flag_value(&args, "--listen")
        .unwrap_or_else(|| panic!("{}: test-server args have no --listen", deployment.what()))
        .parse()
        .unwrap_or_else(|e| panic!("{}: test-server --listen: {e}", deployment.what()));
    assert!(
        listen.ip().is_unspecified(),
        "{}: test-server --listen {listen} must bind all interfaces",
        deployment.what()
    );
    let http = named_port(deployment, container, "http");
    assert_eq!(
        u64::from(listen.port()),
        http,
        "{}: test-server --listen port differs from container port `http`",
        deployment.what()
    );
    let metric_path = effective.get("metricPath").as_str().unwrap();
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some(metric_path),
        "{}: containers[test-server].readinessProbe.httpGet.path is not the ConfigMap's metricPath",
        deployment.what()
    );

    // Whatever the balancer is pointed at must be this Service's port.
    let service_ports: Vec<u64> = service
        .at("spec.ports")
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    let pods = effective
        .get("pods")
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    for pod in &pods {
        let url = url_of(pod.as_str().unwrap_or_default());
        assert_eq!(
            url.0, BACKEND,
            "ConfigMap {BALANCER}: pod {pod:?} does not name Service {BACKEND}"
        );
        assert!(
            service_ports.contains(&url.1),
            "ConfigMap {BALANCER}: pod {pod:?} uses a port {} does not serve",
            service.what()
        );
    }
    // DNS discovery, once the config has it, must name the headless Service.
    let discovery = effective.config.get("discovery").filter(|d| !d.is_null());
    if let Some(discovery) = discovery {
        let dns = discovery["dns"].as_str().unwrap_or_default();
        assert_eq!(
            dns.split('.').next(),
            Some(BACKEND),
            "ConfigMap {BALANCER}: discovery.dns {dns:?} does not name Service {BACKEND}"
        );
        assert!(
            discovery["port"]
                .as_u64()
                .is_some_and(|p| service_ports.contains(&p)),
            "ConfigMap {BALANCER}: discovery.port is not a port of {}",
            service.what()
        );
    } else {
        assert!(
            !pods.is_empty(),
            "ConfigMap {BALANCER}: neither pods nor discovery"
        );
    }
}

/// (first DNS label of the host, port) of an `http://host:port/...` URL.
fn url_of(url: &str) -> (String, u64) {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{url:?} is not a URL"));
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url:?} has no explicit port"));
    let label = host.split('.').next().unwrap_or_default().to_owned();
    (
        label,
        port.parse()
            .unwrap_or_else(|e| panic!("{url:?}: port: {e}")),
    )
}

/// The balancer Service's port that leads to the container's `ws` port.
fn balancer_ws_service_port(docs: &[Doc]) -> u64 {
    let deployment = find(docs, "Deployment", BALANCER);
    let container = container(deployment, BALANCER);
    let service = find(docs, "Service", BALANCER);
    let ws = named_port(deployment, container, "ws");
    service
        .at("spec.ports")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| container_port(deployment, container, &p["targetPort"], "targetPort") == ws)
        .and_then(|p| p["port"].as_u64())
        .unwrap_or_else(|| panic!("{}: no port targets container port ws", service.what()))
}

#[test]
fn traefik_routes_to_the_balancer_websocket_port() {
    let kube = load_dir(&kubernetes_dir());
    let traefik = load_dir(&traefik_dir());
    let effective = effective_config(&kube);
    let ws_port = balancer_ws_service_port(&kube);
    // Traefik must wait for the 101 as long as the balancer may try pods.
    let longest_dial =
        effective.duration("dialTimeout") * u32::try_from(wsbalancer::MAX_ATTEMPTS).unwrap();
    let covers =
        |text: &str| humantime::parse_duration(text).is_ok_and(|t| t.is_zero() || t > longest_dial);

    // File provider.
    let dynamic = traefik
        .iter()
        .find(|d| d.file.ends_with("dynamic.yaml"))
        .expect("deploy/traefik/dynamic.yaml");
    let routers = dynamic.at("http.routers").as_mapping().unwrap();
    assert!(!routers.is_empty(), "{}: no http.routers", dynamic.file);
    for (name, router) in routers {
        let service = router["service"].as_str().unwrap_or_default();
        let servers = lookup(
            &dynamic.value,
            &format!("http.services.{service}.loadBalancer.servers"),
        )
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| {
            panic!(
                "{}: router {name:?} uses service {service:?}, which has no loadBalancer.servers",
                dynamic.file
            )
        });
        for server in servers {
            let url = server["url"].as_str().unwrap_or_default();
            assert_eq!(
                url_of(url),
                (BALANCER.to_owned(), ws_port),
                "{}: http.services.{service}.loadBalancer.servers url {url:?} is not \
                 Service {BALANCER} port {ws_port}",
                dynamic.file
            );
        }
        let transport = lookup(
            &dynamic.value,
            &format!("http.services.{service}.loadBalancer.serversTransport"),
        )
        .and_then(Value::as_str)
        .unwrap_or_default();
        let timeout = lookup(
            &dynamic.value,
            &format!("http.serversTransports.{transport}.forwardingTimeouts.responseHeaderTimeout"),
        )
        .and_then(Value::as_str)
        .unwrap_or_default();
        assert!(
            covers(timeout),
            "{}: http.serversTransports.{transport}.forwardingTimeouts.responseHeaderTimeout \
             {timeout:?} must exceed {longest_dial:?} (dialTimeout x {} attempts)",
            dynamic.file,
            wsbalancer::MAX_ATTEMPTS
        );
    }

    // Kubernetes CRD provider.
    let route = find(&traefik, "IngressRoute", BALANCER);
    assert!(
        route.str_at("apiVersion") == "traefik.io/v1alpha1",
        "{}: apiVersion",
        route.what()
    );
    let routes = route.at("spec.routes").as_sequence().unwrap();
    assert!(!routes.is_empty(), "{}: no spec.routes", route.what());
    for (i, r) in routes.iter().enumerate() {
        for service in r["services"].as_sequence().into_iter().flatten() {
            assert_eq!(
                service["name"].as_str(),
                Some(BALANCER),
                "{}: spec.routes[{i}].services[].name",
                route.what()
            );
            let port = match &service["port"] {
                Value::String(name) => {
                    let svc = find(&kube, "Service", BALANCER);
                    svc.at("spec.ports")
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .find(|p| p["name"].as_str() == Some(name))
                        .and_then(|p| p["port"].as_u64())
                }
                other => other.as_u64(),
            };
            assert_eq!(
                port,
                Some(ws_port),
                "{}: spec.routes[{i}].services[].port is not Service {BALANCER}'s ws port",
                route.what()
            );
            if let Some(transport) = service["serversTransport"].as_str() {
                let transport = find(&traefik, "ServersTransport", transport);
                let timeout = transport.str_at("spec.forwardingTimeouts.responseHeaderTimeout");
                assert!(
                    covers(timeout),
                    "{}: spec.forwardingTimeouts.responseHeaderTimeout {timeout:?} must exceed \
                     {longest_dial:?}",
                    transport.what()
                );
            }
        }
    }
}

#[test]
fn dockerfile_builds_both_images_the_manifests_use() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains("cargo build --release --locked -p wsbalancer -p test-server"),
        "Dockerfile: the build step must build both binaries with --locked"
    );
    let docs = load_dir(&kubernetes_dir());
    for (name, container_name, target) in [
        (BALANCER, BALANCER, "wsbalancer"),
        (BACKEND, "test-server", "test-server"),
    ] {
        let deployment = find(&docs, "Deployment", name);
        let image = container(deployment, container_name)["image"]
            .as_str()
            .unwrap_or_default();
        let stage = dockerfile
            .split("\nFROM ")
            .find(|s| {
                s.lines()
                    .next()
                    .is_some_and(|l| l.ends_with(&format!(" AS {target}")))
            })
            .unwrap_or_else(|| panic!("Dockerfile: no stage `AS {target}` for {image}"));
        assert!(
            stage.starts_with("gcr.io/distroless/cc-debian12:nonroot"),
            "Dockerfile: stage {target} must run on distroless nonroot"
        );
        assert!(
            stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{target}\"]")),
            "Dockerfile: stage {target} must run /usr/local/bin/{target}"
        );
        assert!(
            dockerfile.contains(&format!("--target {target}")) && dockerfile.contains(image),
            "Dockerfile: its comment shows no `--target {target}` build tagged {image} \
             (the image of {})",
            deployment.what()
        );
    }
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        ".dockerignore must leave target/ out of the build context"
    );
}
