"""The seed's own setup, with only the oauth2-proxy Deployment replaced: a real Debian nginx
configured the way ingress-nginx renders the auth-url / auth-signin / auth-response-headers
annotations, a real Prometheus as the protected service, and Envoy + the filter
(envoy/authservice.yaml) as the auth service on its own host. A browser logs in through it.

Hosts: prometheus.mydomain.localhost (the protected Ingress) and auth.mydomain.localhost (the
auth service's Ingress), both on one nginx port; Chromium resolves *.localhost to 127.0.0.1.
"""

import os
import re
import shutil
import subprocess

import pytest
import requests

import harness as h
from test_browser import WebDriver, _have_browser, _login_in_browser

DOMAIN = "mydomain.localhost"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
MODULES = "/usr/lib/nginx/modules"

pytestmark = pytest.mark.browser


def _have_tools():
    return (os.path.exists(NGINX) and os.path.exists(PROMETHEUS)
            and os.path.exists(os.path.join(MODULES, "ngx_http_set_misc_module.so")))


# What ingress-nginx renders for a protected Ingress with
#   nginx.ingress.kubernetes.io/auth-url: http://auth.DOMAIN:PORT/oauth2/auth
#   nginx.ingress.kubernetes.io/auth-signin: http://auth.DOMAIN:PORT/oauth2/start
#   nginx.ingress.kubernetes.io/auth-response-headers: X-Auth-Request-User,X-Auth-Request-Email
# (its nginx.tmpl: the internal auth location, auth_request + auth_request_set per header,
# Set-Cookie passed back, error_page 401 to the sign-in URL with rd), and for the auth
# service's own Ingress. The auth sub-request goes through this nginx, as it goes through
# the ingress to oauthproxy.mydomain.com in the seed.
NGINX_CONF = """
load_module {modules}/ndk_http_module.so;
load_module {modules}/ngx_http_set_misc_module.so;
worker_processes 1;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  log_format identity '$request_uri user=$authHeader0 email=$authHeader1';

  # The auth service's Ingress (oauthproxy.mydomain.com in the seed).
  server {{
    listen 127.0.0.1:{port};
    server_name auth.{domain};
    location / {{
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_pass http://127.0.0.1:{envoy_port};
    }}
  }}

  # The protected Ingress.
  server {{
    listen 127.0.0.1:{port};
    server_name prometheus.{domain};

    location = /_external-auth-Lw {{
      internal;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Forwarded-Proto "";
      proxy_set_header Host auth.{domain}:{port};
      proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Sent-From "nginx-ingress-controller";
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Auth-Request-Redirect $request_uri;
      proxy_http_version 1.1;
      proxy_pass_request_headers on;
      set $target http://127.0.0.1:{port}/oauth2/auth;
      proxy_pass $target;
    }}

    location @Lw-SignIn {{
      internal;
      add_header Set-Cookie $auth_cookie;
      return 302 http://auth.{domain}:{port}/oauth2/start?rd=$pass_access_scheme://$http_host$escaped_request_uri;
    }}

    location / {{
      set $pass_access_scheme $scheme;
      set_escape_uri $escaped_request_uri $request_uri;
      auth_request /_external-auth-Lw;
      auth_request_set $auth_cookie $upstream_http_set_cookie;
      add_header Set-Cookie $auth_cookie;
      auth_request_set $authHeader0 $upstream_http_x_auth_request_user;
      proxy_set_header 'X-Auth-Request-User' $authHeader0;
      auth_request_set $authHeader1 $upstream_http_x_auth_request_email;
      proxy_set_header 'X-Auth-Request-Email' $authHeader1;
      error_page 401 = @Lw-SignIn;
      access_log {dir}/protected.log identity;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_pass http://127.0.0.1:{prom_port};
    }}
  }}
}}
"""


@pytest.fixture(scope="module")
def ingress(log_dir, wasm, upstream):
    if not _have_tools():
        if os.environ.get("E2E_BROWSER") == "1":
            pytest.fail("nginx, libnginx-mod-http-set-misc or prometheus missing: "
                        "run envoy/install.sh --ingress")
        pytest.skip("nginx / prometheus missing (envoy/install.sh --ingress)")
    port = h.free_port()
    auth_base = "http://auth.%s:%d" % (DOMAIN, port)
    op = h.OP(log_dir, [], name="op-ingress",
              redirect_uris=[auth_base + "/oauth2/callback"])
    envoy = h.Envoy(log_dir, "envoy-authservice", h.free_port(), op.port, upstream.port,
                    concurrency=1, base=os.path.join(h.ENVOY_DIR, "authservice.yaml"),
                    overrides={"cookie_domains": ["." + DOMAIN],
                               # rd carries the nginx port: any port of the domain.
                               "whitelist_domains": ["." + DOMAIN + ":*"],
                               "cookie_secure": False})
    run = os.path.join(log_dir, "ingress-nginx")
    os.makedirs(run, exist_ok=True)
    prom_port = h.free_port()
    with open(os.path.join(run, "prometheus.yml"), "w") as f:
        f.write("global: {scrape_interval: 15s}\nscrape_configs:\n- job_name: prometheus\n"
                "  static_configs: [{targets: ['127.0.0.1:%d']}]\n" % prom_port)
    prom = h.Proc("prometheus", [PROMETHEUS, "--config.file=" + os.path.join(run, "prometheus.yml"),
                                 "--storage.tsdb.path=" + os.path.join(run, "prom-data"),
                                 "--web.listen-address=127.0.0.1:%d" % prom_port], log_dir)
    h.wait_until(lambda: requests.get("http://127.0.0.1:%d/-/ready" % prom_port,
                                      timeout=1).status_code == 200, 30, "prometheus ready")
    conf = os.path.join(run, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(modules=MODULES, dir=run, port=port, domain=DOMAIN,
                                  envoy_port=envoy.port, prom_port=prom_port))
    check = subprocess.run([NGINX, "-t", "-p", run, "-c", conf], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    nginx = h.Proc("nginx", [NGINX, "-p", run, "-c", conf, "-g", "daemon off;"], log_dir)
    h.wait_until(lambda: h.port_open(port), 10, "nginx on :%d" % port)
    yield {"port": port, "auth": auth_base, "run": run,
           "app": "http://prometheus.%s:%d" % (DOMAIN, port)}
    nginx.stop()
    prom.stop()
    envoy.stop()
    op.stop()


def _as(host, port, path, **kw):
    """A request to nginx for virtual host `host` (requests cannot resolve *.localhost)."""
    headers = dict(kw.pop("headers", {}))
    headers["Host"] = "%s:%d" % (host, port)
    return requests.get("http://127.0.0.1:%d%s" % (port, path), headers=headers,
                        allow_redirects=False, timeout=10, **kw)


def test_without_a_session_nginx_sends_the_browser_to_the_sign_in_url(ingress):
    r = _as("prometheus." + DOMAIN, ingress["port"], "/graph?g0.expr=up", headers=h.HTML)
    assert r.status_code == 302, (r.status_code, r.text[:200])
    # set_escape_uri escapes the request URI's / too, as ingress-nginx sends it.
    assert r.headers["Location"] == (
        ingress["auth"] + "/oauth2/start?rd=http://prometheus.%s:%d%%2Fgraph%%3Fg0.expr%%3Dup"
        % (DOMAIN, ingress["port"])), r.headers["Location"]
    # The sign-in URL starts a login at the provider for the auth host's callback.
    r = _as("auth." + DOMAIN, ingress["port"], up_path(r.headers["Location"]), headers=h.HTML)
    assert r.status_code == 302 and "/auth?" in r.headers["Location"], r.text[:200]
    assert h.qs(r.headers["Location"])["redirect_uri"] == ingress["auth"] + "/oauth2/callback"


def up_path(url):
    import urllib.parse as up
    u = up.urlsplit(url)
    return u.path + ("?" + u.query if u.query else "")


def test_login_through_nginx_reaches_prometheus_with_identity_headers(ingress, log_dir):
    if not _have_browser():
        pytest.skip("chromium missing")
    wd = WebDriver(log_dir)
    try:
        target = ingress["app"] + "/graph"
        _login_in_browser(wd, target, user="bob@example.com")
        try:
            wd.wait_for(lambda: wd.url().startswith(ingress["app"]) and "Prometheus" in wd.source(),
                        what="Prometheus behind nginx")
        except TimeoutError as e:
            raise AssertionError("%s: at %s: %s; cookies %s" % (
                e, wd.url(), wd.source()[:300], wd.cookies())) from e
        # (Debian's Prometheus serves its classic UI there.)
        assert wd.url().startswith(ingress["app"]) and "/graph" in wd.url(), wd.url()
        # The session cookie is on the common domain, so nginx's sub-request carries it.
        cookies = {c["name"]: c for c in wd.cookies()}
        assert cookies["_oauth2_proxy"]["domain"].lstrip(".") == DOMAIN, cookies["_oauth2_proxy"]
        # Prometheus got the identity from auth-response-headers (nginx's log of what it
        # sent), for the page and for the API calls the page makes.
        def logged():
            with open(os.path.join(ingress["run"], "protected.log")) as f:
                return f.read()
        h.wait_until(lambda: "user=bob email=bob@example.com" in logged(), 10, "identity at Prometheus")
        assert re.search(r"^/graph user=bob email=bob@example.com$", logged(), re.M), logged()
        # Sign-out on the auth host clears the cookie on the common domain, so the protected
        # host loses it too (sent by hand: in the browser, the provider's live session would
        # log it straight back in).
        session = cookies["_oauth2_proxy"]["value"]
        r = _as("auth." + DOMAIN, ingress["port"], "/oauth2/sign_out",
                headers={"Cookie": "_oauth2_proxy=" + session})
        assert r.status_code == 302
        cleared = [c for c in h.set_cookie_headers(r) if c.startswith("_oauth2_proxy=;")]
        assert cleared and "Domain=.%s" % DOMAIN in cleared[0] and "Max-Age=0" in cleared[0], \
            h.set_cookie_headers(r)
        # And the same cookie through nginx on the protected host, by an API client: passes.
        r = _as("prometheus." + DOMAIN, ingress["port"], "/api/v1/status/buildinfo",
                headers={"Cookie": "_oauth2_proxy=" + session, "Accept": "application/json"})
        assert r.status_code == 200 and r.json()["status"] == "success", r.text[:200]
    finally:
        wd.quit()


def test_a_forged_identity_header_does_not_reach_prometheus(ingress):
    """Without a session nginx answers itself; the client's X-Auth-Request-User never passes."""
    r = _as("prometheus." + DOMAIN, ingress["port"], "/api/v1/status/buildinfo",
            headers={"X-Auth-Request-User": "admin", "Accept": "application/json"})
    assert r.status_code == 302
    with open(os.path.join(ingress["run"], "protected.log")) as f:
        assert "user=admin" not in f.read()
