"""envoy/k8s/authservice/: the Kubernetes manifests of the auth-url mode hang together, and the
ConfigMap's Envoy config is one a real Envoy accepts and runs (with the filter loading it)."""

import os
import re
import subprocess

import pytest
import requests
import yaml

import harness as h

K8S = os.path.join(h.ENVOY_DIR, "k8s", "authservice")


def docs(name):
    with open(os.path.join(K8S, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


@pytest.fixture(scope="module")
def manifests():
    out = {}
    for name in sorted(os.listdir(K8S)):
        if name.endswith(".yaml"):
            for d in docs(name):
                out[(d["kind"], d["metadata"]["name"])] = d
    return out


def envoy_config(manifests):
    return yaml.safe_load(manifests[("ConfigMap", "oidc-filter-envoy")]["data"]["envoy.yaml"])


def wasm_of(cfg):
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm"][0][
        "typed_config"]["config"]


def test_the_pieces_refer_to_each_other(manifests):
    dep = manifests[("Deployment", "oauth2-proxy")]
    svc = manifests[("Service", "oauth2-proxy")]
    pod = dep["spec"]["template"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    c = pod["spec"]["containers"][0]
    cfg = envoy_config(manifests)
    listen = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listen == {"address": "0.0.0.0", "port_value": 4180}
    assert {p["containerPort"] for p in c["ports"]} == {4180}
    assert svc["spec"]["ports"][0]["port"] == 4180
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["config"]["configMap"]["name"] == "oidc-filter-envoy"
    assert c["args"][:2] == ["-c", mounts["config"] + "/envoy.yaml"]
    wasm = wasm_of(cfg)
    assert wasm["vm_config"]["code"]["local"]["filename"] == mounts["plugin"] + "/plugin.wasm"
    assert "image" in vols["plugin"]
    # The secrets: from the Secret to the container's env, to the VM, to the config's *_env.
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
    secret = manifests[("Secret", "oidc-filter")]
    assert all(ref["name"] == "oidc-filter" and ref["key"] in secret["stringData"]
               for ref in env.values())
    assert set(wasm["vm_config"]["environment_variables"]["host_env_keys"]) == set(env)
    import json
    plugin = json.loads(wasm["configuration"]["value"])
    assert {plugin["client_secret_env"], plugin["cookie_secret_env"]} == set(env)
    assert c["readinessProbe"]["httpGet"]["path"] == "/oauth2/ready"
    # The ingress side: the seed's three annotations, pointing at this service's host.
    prot = manifests[("Ingress", "prometheus")]["metadata"]["annotations"]
    auth_ing = manifests[("Ingress", "oauth2-proxy")]["spec"]["rules"][0]
    assert prot["nginx.ingress.kubernetes.io/auth-url"] == "http://%s/oauth2/auth" % auth_ing["host"]
    assert prot["nginx.ingress.kubernetes.io/auth-signin"] == "http://%s/oauth2/start" % auth_ing["host"]
    assert prot["nginx.ingress.kubernetes.io/auth-response-headers"] == \
        "X-Auth-Request-User,X-Auth-Request-Email"
    assert plugin["set_xauthrequest"] is True
    # The session cookie must reach the auth sub-request of every protected host.
    protected = manifests[("Ingress", "prometheus")]["spec"]["rules"][0]["host"]
    domain = plugin["cookie_domains"][0]
    assert protected.endswith(domain) and auth_ing["host"].endswith(domain)


def test_the_configmap_envoy_config_runs_in_real_envoy(manifests, log_dir, wasm, op):
    """The ConfigMap's Envoy config, with the module path and the IdP address pointed at the
    test's own (no TLS, as the local provider speaks HTTP), starts in real Envoy and the
    filter in it answers as the auth service: /oauth2/ready, then 401 from /oauth2/auth."""
    cfg = envoy_config(manifests)
    wasm_cfg = wasm_of(cfg)
    wasm_cfg["vm_config"]["code"]["local"]["filename"] = os.path.abspath(wasm)
    port, admin = h.free_port(), h.free_port()
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"] = {
        "address": "127.0.0.1", "port_value": port}
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    import json
    plugin = json.loads(wasm_cfg["configuration"]["value"])
    plugin["oidc_issuer_url"] = op.issuer
    wasm_cfg["configuration"]["value"] = json.dumps(plugin)
    idp = cfg["static_resources"]["clusters"][0]
    idp.pop("transport_socket")
    idp["type"] = "STATIC"
    idp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"] = {"address": "127.0.0.1", "port_value": op.port}
    path = os.path.join(log_dir, "authservice-k8s.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    env = dict(os.environ, OIDC_CLIENT_SECRET=h.CLIENT_SECRET, OIDC_COOKIE_SECRET=h.COOKIE_SECRET)
    ok = subprocess.run([h.envoy_binary(), "--mode", "validate", "-c", path,
                         "--base-id", str(next(h._base_ids))], capture_output=True, text=True,
                        env=env, timeout=60)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    proc = h.Proc("envoy-authservice-k8s", [h.envoy_binary(), "-c", path, "--base-id",
                                            str(next(h._base_ids)), "--concurrency", "1"],
                  log_dir, env=env)
    try:
        base = "http://127.0.0.1:%d" % port
        h.wait_until(lambda: requests.get(base + "/oauth2/ready", timeout=1).status_code == 200,
                     30, "the filter ready in the ConfigMap's Envoy")
        r = requests.get(base + "/oauth2/auth", timeout=5)
        assert (r.status_code, r.headers["x-oidc-filter-reason"]) == (401, "unauthenticated")
        r = requests.get(base + "/oauth2/start?rd=http://myservice.mydomain.com/", timeout=5,
                         headers={"Host": "oauthproxy.mydomain.com"}, allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"].startswith(op.issuer), r.text[:200]
        assert re.search(r"redirect_uri=http%3A%2F%2Foauthproxy\.mydomain\.com%2Foauth2%2Fcallback",
                         r.headers["Location"])
    finally:
        proc.stop()
