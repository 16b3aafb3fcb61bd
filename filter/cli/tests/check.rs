//! `oidc-filter check` on each kind of file, with its exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oidc-filter"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn write(name: &str, text: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("check");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

const GOOD: &str = r#"{"oidc_issuer_url": "https://idp.example.com", "client_id": "app",
  "client_secret": "s", "cookie_secret": "q83vEjRWeJCrze8SNFZ4kA==", "idp_cluster": "idp"}"#;

#[test]
fn the_shipped_envoy_and_istio_configs_are_accepted() {
    let (code, out) = run(&[
        "check",
        &repo("envoy/envoy.yaml"),
        &repo("istio/wasmplugin.yaml"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(": accepted").count(), 2, "{out}");
    assert!(
        out.contains("not checked: OIDC_CLIENT_SECRET, OIDC_COOKIE_SECRET"),
        "{out}"
    );
}

#[test]
fn the_auth_service_configmap_is_checked_inside() {
    let f = repo("envoy/k8s/authservice/configmap.yaml");
    let (code, out) = run(&["check", &f]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ConfigMap oidc-filter-envoy envoy.yaml"),
        "{out}"
    );
    assert!(
        out.contains("not checked: OIDC_CLIENT_SECRET, OIDC_COOKIE_SECRET"),
        "{out}"
    );
}

#[test]
fn every_wrong_field_of_a_json_config_is_named() {
    let f = write("good.json", GOOD);
    assert_eq!(run(&["check", &f]).0, 0);
    let bad = GOOD
        .replace("\"app\"", "\"\"")
        .replace("}", ", \"cookie_expire\": \"soon\", \"no_such_key\": 1}");
    let f = write("bad.json", &bad);
    let (code, out) = run(&["check", &f]);
    assert_eq!(code, 1, "{out}");
    for field in ["client_id", "cookie_expire", "no_such_key"] {
        assert!(
            out.lines().any(|l| l.contains(&format!("config: {field}"))),
            "{field} not named: {out}"
        );
    }
}

#[test]
fn an_envoy_yaml_with_a_bad_configuration_string() {
    let yaml = std::fs::read_to_string(repo("envoy/envoy.yaml"))
        .unwrap()
        .replace(
            "\"cookie_expire\": \"8h\"",
            "\"cookie_expire\": \"8 hours\"",
        );
    let f = write("envoy-bad.yaml", &yaml);
    let (code, out) = run(&["check", &f]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("http_filters") && out.contains("cookie_expire"),
        "{out}"
    );
}

#[test]
fn an_istio_wasmplugin_with_env_from_the_host_and_given() {
    let doc = r#"
apiVersion: v1
kind: Secret
metadata: {name: other}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: sso}
spec:
  url: oci://example/plugin:1
  vmConfig:
    env:
    - {name: OIDC_COOKIE_SECRET, valueFrom: HOST}
    - {name: OIDC_CLIENT_SECRET, value: inline-secret}
  pluginConfig:
    oidc_issuer_url: https://idp.example.com
    client_id: app
    client_secret_env: OIDC_CLIENT_SECRET
    cookie_secret_env: OIDC_COOKIE_SECRET
    idp_cluster: "outbound|443||idp.example.com"
"#;
    let f = write("wasmplugin.yaml", doc);
    let (code, out) = run(&["check", &f]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("document 2: WasmPlugin sso: accepted"),
        "{out}"
    );
    assert!(out.contains("not checked: OIDC_COOKIE_SECRET"), "{out}");
    // Given, the host's value is checked like any other: a weak one is refused.
    let (code, out) = run(&[
        "check",
        &f,
        "--env",
        "OIDC_COOKIE_SECRET=password123password123password123",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cookie_secret"), "{out}");
}

#[test]
fn nothing_to_check_and_bad_usage_exit_2() {
    let f = write("other.yaml", "kind: Service\nmetadata: {name: x}\n");
    let (code, out) = run(&["check", &f]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no oidc-filter configuration found"));
    assert_eq!(run(&["check", "/no/such/file"]).0, 2);
    assert_eq!(run(&["verify"]).0, 2);
    assert_eq!(run(&["check", &write("broken.yaml", "a: [1, 2\n")]).0, 2);
}
