"""Istio as it runs, without a control plane: istio/translate.py turns the shipped manifests
(istio/wasmplugin.yaml, istio/serviceentry.yaml, istio/examples/prometheus/gateway.yaml and
virtualservice.yaml) into the Envoy config an ingress gateway gets from istiod, the filter
delivered by ECDS. The provider is served over HTTPS with its own CA, as
https://localhost:PORT, standing in for issuer.example.com.

A login goes through it; without the module the gateway lets nothing through (FAIL_CLOSE);
a provider certificate without the name the DestinationRule demands is refused.
"""

import os
import subprocess
import sys

import pytest
import requests

import harness as h

ISTIO = os.path.join(h.ROOT, "istio")
MANIFESTS = [os.path.join(ISTIO, "wasmplugin.yaml"), os.path.join(ISTIO, "serviceentry.yaml"),
             os.path.join(ISTIO, "examples", "prometheus", "gateway.yaml"),
             os.path.join(ISTIO, "examples", "prometheus", "virtualservice.yaml")]
PLACEHOLDER_URL = ("oci://registry.example.com/oidc-filter@sha256:"
                   "0000000000000000000000000000000000000000000000000000000000000000")


@pytest.fixture(scope="module")
def pki(log_dir):
    d = os.path.join(log_dir, "istio-pki")
    os.makedirs(d, exist_ok=True)

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "localhost.key", "-out", "localhost.csr")
    ssl("x509", "-req", "-in", "localhost.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "localhost.pem")
    return {k: os.path.join(d, v) for k, v in
            {"ca": "ca.pem", "cert": "localhost.pem", "key": "localhost.key"}.items()}


@pytest.fixture(scope="module")
def gateway_port():
    return h.free_port()


@pytest.fixture(scope="module")
def tls_op(log_dir, pki, gateway_port):
    p = h.OP(log_dir, [], name="op-istio", tls=(pki["cert"], pki["key"], pki["ca"]),
             redirect_uris=["https://localhost:%d/oauth2/callback" % gateway_port])
    yield p
    p.stop()


def manifests(tmp, op, pki, san="localhost"):
    """The shipped manifests, pointed at this test's provider: issuer.example.com becomes
    localhost on the provider's port; the example's host becomes localhost too."""
    out = []
    for path in MANIFESTS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        text = (text.replace("https://issuer.example.com", op.issuer)
                    .replace("outbound|443||issuer.example.com", "outbound|%d||localhost" % op.port)
                    .replace("number: 443\n    name: https\n    protocol: HTTPS",
                             "number: %d\n    name: https\n    protocol: HTTPS" % op.port)
                    .replace("      - port:\n          number: 443", "      - port:\n          number: %d" % op.port)
                    .replace("    - port:\n        number: 443", "    - port:\n        number: %d" % op.port)
                    .replace("subjectAltNames:\n        - issuer.example.com",
                             "subjectAltNames:\n        - @SAN@")
                    .replace("issuer.example.com", "localhost")
                    .replace("prometheus.mydomain.com", "localhost")
                    .replace("client_id: oidc-filter", "client_id: %s" % h.CLIENT_ID)
                    .replace("# caCertificates: /etc/ssl/certs/ca-certificates.crt",
                             "caCertificates: %s" % pki["ca"])
                    .replace("@SAN@", san))
        dst = os.path.join(tmp, os.path.basename(path))
        with open(dst, "w", encoding="utf-8") as f:
            f.write(text)
        out.append(dst)
    return out


def gateway(log_dir, name, op, pki, upstream, port, module=True, san="localhost"):
    out = os.path.join(log_dir, name)
    os.makedirs(out, exist_ok=True)
    admin = h.free_port()
    args = [sys.executable, os.path.join(ISTIO, "translate.py"), *manifests(out, op, pki, san),
            "--out", out, "--admin-port", str(admin), "--port", "443=%d" % port,
            "--credential", "prometheus-mydomain-com-tls=%s,%s" % (pki["cert"], pki["key"]),
            "--endpoint", "prometheus-server.monitoring.svc.cluster.local=127.0.0.1:%d" % upstream.port]
    if module:
        args += ["--module", "%s=%s" % (PLACEHOLDER_URL, h.wasm_path())]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, OIDC_CLIENT_SECRET=h.CLIENT_SECRET, OIDC_COOKIE_SECRET=h.COOKIE_SECRET)
    proc = h.Proc(name, [h.envoy_binary(), "-c", os.path.join(out, "envoy.json"), "--base-id",
                         str(next(h._base_ids)), "--concurrency", "1", "--log-level", "warning",
                         "--component-log-level", "wasm:info"], log_dir, env=env)
    return proc, admin, r.stderr


class Base:
    def __init__(self, port):
        self.base = "https://localhost:%d" % port
        self.port = port


def test_a_login_through_the_translated_gateway(log_dir, pki, tls_op, upstream, wasm, gateway_port):
    proc, admin, _ = gateway(log_dir, "istio-gateway", tls_op, pki, upstream, gateway_port)
    try:
        gw = Base(gateway_port)
        h.wait_until(lambda: proc.alive() and requests.get(
            gw.base + "/oauth2/ready", verify=pki["ca"], timeout=1).status_code == 200,
            30, "the filter, delivered by ECDS, ready behind TLS to the provider")
        # ECDS delivered the filter's config, under the name istiod gives it.
        dump = requests.get("http://127.0.0.1:%d/config_dump" % admin, timeout=5).text
        assert '"name": "istio-system.oidc-filter"' in dump and "EcdsConfigDump" in dump
        with requests.Session() as s:
            # (Else a REQUESTS_CA_BUNDLE in the environment would override it.)
            s.trust_env = False
            s.verify = pki["ca"]
            h.login_ok(s, gw, "/graph")
            v = h.upstream_view(h.get_json(s, gw, "/api/v1/query"))
            assert v["identity"]["x-forwarded-email"] == "alice@example.com", v["identity"]
        cookie = [c for c in s.cookies if c.name == "_oauth2_proxy"][0]
        assert cookie.secure
    finally:
        proc.stop()


def test_without_the_module_nothing_passes(log_dir, pki, tls_op, upstream, wasm):
    port = h.free_port()
    proc, admin, stderr = gateway(log_dir, "istio-gateway-nomodule", tls_op, pki, upstream, port,
                                  module=False)
    try:
        assert "NACK" in stderr
        h.wait_until(lambda: requests.get("http://127.0.0.1:%d/ready" % admin,
                                          timeout=1).status_code in (200, 503), 30, "admin up")
        # Envoy refuses the empty ECDS answer (as it would never get one after the agent's
        # NACK): the filter has no config, and Envoy answers every request through it with a
        # 5xx of its own; none reaches the upstream, whatever it carries.
        h.wait_until(lambda: "rejected" in proc.log_text(), 10, "the ECDS update refused")
        statuses = []
        for path in ("/", "/api/v1/query", "/oauth2/ping"):
            r = requests.get("https://localhost:%d%s" % (port, path), verify=pki["ca"],
                             headers={"X-Auth-Request-User": "admin"}, timeout=3)
            assert "x-forwarded-email" not in r.text and '"identity"' not in r.text
            statuses.append(r.status_code)
        assert all(s >= 500 for s in statuses), statuses
        assert proc.alive()
    finally:
        proc.stop()


def test_a_provider_certificate_without_the_demanded_name_is_refused(
        log_dir, pki, tls_op, upstream, wasm):
    port = h.free_port()
    proc, admin, _ = gateway(log_dir, "istio-gateway-wrongsan", tls_op, pki, upstream, port,
                             san="issuer.example.com")
    try:
        base = "https://localhost:%d" % port
        h.wait_until(lambda: requests.get(base + "/oauth2/ping", verify=pki["ca"],
                                          timeout=1).status_code == 200, 30, "gateway up")
        stats = "http://127.0.0.1:%d/stats" % admin

        def refused():
            text = requests.get(stats, timeout=2).text
            return any(l.endswith("ssl.fail_verify_san: %s" % n) for l in text.splitlines()
                       for n in range(1, 100))
        h.wait_until(refused, 20, "the provider's certificate refused for its name")
        assert requests.get(base + "/oauth2/ready", verify=pki["ca"], timeout=3).status_code == 503
        r = requests.get(base + "/graph", verify=pki["ca"], headers=h.HTML, timeout=3,
                         allow_redirects=False)
        assert (r.status_code, r.headers.get("x-oidc-filter-reason")) == (503, "idp_not_ready")
    finally:
        proc.stop()
