"""End-to-end in a real browser: headless Debian Chromium driven over raw WebDriver HTTP.

Needs `chromium` and `chromium-driver` (envoy/install.sh --browser). Skipped when they are
missing, unless E2E_BROWSER=1 (then missing tools are a failure).
"""

import base64
import os
import shutil
import tempfile

import pytest
import requests

import harness as h

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def _have_browser():
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


class WebDriver:
    """The few WebDriver commands the tests need."""

    def __init__(self, log_dir):
        self.port = h.free_port()
        self.profile = tempfile.mkdtemp(prefix="oidc-e2e-chromium-")
        self.driver = h.Proc("chromedriver", [CHROMEDRIVER, "--port=%d" % self.port], log_dir)
        self.base = "http://127.0.0.1:%d" % self.port
        h.wait_until(lambda: requests.get(self.base + "/status", timeout=1).json()["value"]["ready"],
                     20, "chromedriver")
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1100,900",
                         "--user-data-dir=" + self.profile],
            },
        }}}
        r = requests.post(self.base + "/session", json=caps, timeout=60)
        assert r.status_code == 200, r.text[:500]
        self.sid = r.json()["value"]["sessionId"]

    def _cmd(self, method, path, body=None):
        r = requests.request(method, "%s/session/%s%s" % (self.base, self.sid, path),
                             json=body, timeout=30)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        return r.json()["value"]

    def get(self, url):
        self._cmd("POST", "/url", {"url": url})

    def url(self):
        return self._cmd("GET", "/url")

    def source(self):
        return self._cmd("GET", "/source")

    def find(self, css):
        return self._cmd("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css, text):
        el = self.find(css)
        self._cmd("POST", "/element/%s/clear" % el, {})
        self._cmd("POST", "/element/%s/value" % el, {"text": text})

    def click(self, css):
        self._cmd("POST", "/element/%s/click" % self.find(css), {})

    def script(self, js):
        return self._cmd("POST", "/execute/sync", {"script": js, "args": []})

    def cookies(self):
        return self._cmd("GET", "/cookie")

    def screenshot(self, path):
        with open(path, "wb") as f:
            f.write(base64.b64decode(self._cmd("GET", "/screenshot")))

    def wait_for(self, pred, timeout=15, what="page"):
        return h.wait_until(pred, timeout, what, 0.2)

    def quit(self):
        try:
            requests.delete("%s/session/%s" % (self.base, self.sid), timeout=10)
        except requests.RequestException:
            pass
        self.driver.stop()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(log_dir):
    if not _have_browser():
        if os.environ.get("E2E_BROWSER") == "1":
            pytest.fail("chromium/chromedriver missing: run envoy/install.sh --browser")
        pytest.skip("chromium/chromedriver missing (envoy/install.sh --browser)")
    wd = WebDriver(log_dir)
    yield wd
    wd.quit()


def _login_in_browser(wd, start_url, user="alice@example.com"):
    wd.get(start_url)
    wd.wait_for(lambda: "/interaction/" in wd.url() and "login-form" in wd.source(), what="OP login form")
    wd.type("#login", user)
    wd.type("#password", h.PASSWORD)
    wd.click("#submit")
    wd.wait_for(lambda: "consent-form" in wd.source() or "id=who" in wd.source(), what="consent or app")
    if "consent-form" in wd.source():
        wd.click("#submit")


def test_browser_login_shows_identity(browser, envoy, log_dir):
    wd = browser
    _login_in_browser(wd, envoy.base + "/hello?from=browser")
    wd.wait_for(lambda: wd.url().startswith(envoy.base + "/hello"), what="back at the app")
    assert wd.url() == envoy.base + "/hello?from=browser"
    src = wd.source()
    assert "alice@example.com" in src and "Signed in as" in src, src[:500]
    wd.screenshot(os.path.join(log_dir, "browser-logged-in.png"))
    cookies = {c["name"]: c for c in wd.cookies()}
    assert "_oauth2_proxy" in cookies, list(cookies)
    assert cookies["_oauth2_proxy"]["httpOnly"] is True
    assert cookies["_oauth2_proxy"].get("sameSite") == "Lax"
    assert not any(n.startswith("_oauth2_proxy_csrf_") for n in cookies), list(cookies)
    assert "_oauth2_proxy" not in wd.script("return document.cookie;")
    # Page shows the headers the upstream saw: our cookie is not among them.
    assert "_oauth2_proxy=" not in src


def test_browser_sign_out(browser, envoy):
    wd = browser
    wd.get(envoy.base + "/before-sign-out")
    wd.wait_for(lambda: "Signed in as" in wd.source(), what="app")
    # Sign out with fetch (redirect: manual): navigating would follow rd to a protected page,
    # and the OP (which keeps its own session) would log the browser straight back in.
    status = wd.script("""return fetch('/oauth2/sign_out', {redirect: 'manual', credentials: 'same-origin'})
        .then(r => r.type + ':' + r.status);""")
    assert status.startswith("opaqueredirect"), status
    assert "_oauth2_proxy" not in {c["name"] for c in wd.cookies()}
    api = wd.script("""return fetch('/api/after-sign-out', {headers: {'Accept': 'application/json'}})
        .then(r => r.status);""")
    assert api == 401


def test_browser_login_on_localhost_name(browser, envoy):
    """The same filter serves http://localhost:PORT (redirect_uri follows the request authority)."""
    wd = browser
    base = "http://localhost:%d" % envoy.port
    wd.get(base + "/via-localhost")
    # The OP session from the first test logs the user in without a form, or shows one.
    wd.wait_for(lambda: wd.url().startswith(base + "/via-localhost") or "login-form" in wd.source()
                or "consent-form" in wd.source(), what="app or OP form")
    if "login-form" in wd.source() or "consent-form" in wd.source():
        if "login-form" in wd.source():
            wd.type("#login", "alice@example.com")
            wd.type("#password", h.PASSWORD)
            wd.click("#submit")
            wd.wait_for(lambda: "consent-form" in wd.source() or wd.url().startswith(base), what="next")
        if "consent-form" in wd.source():
            wd.click("#submit")
    wd.wait_for(lambda: wd.url().startswith(base + "/via-localhost") and "Signed in as" in wd.source(),
                what="app on localhost")
    assert "alice@example.com" in wd.source()


def test_two_browsers_log_in_concurrently(browser, envoy, log_dir):
    """Two more Chromiums (own profiles) log in at the same time, as bob and as alice; each
    ends on its own page with its own identity."""
    from concurrent.futures import ThreadPoolExecutor
    second = WebDriver(log_dir)
    third = WebDriver(log_dir)
    try:
        def run(args):
            wd, user, path = args
            _login_in_browser(wd, envoy.base + path, user)
            wd.wait_for(lambda: wd.url().startswith(envoy.base + path) and "Signed in as" in wd.source(),
                        what="app for %s" % user)
            return wd.script("return document.getElementById('email').textContent;")
        with ThreadPoolExecutor(2) as ex:
            got = list(ex.map(run, [(second, "bob@example.com", "/b"), (third, "alice@example.com", "/a")]))
        assert got == ["bob@example.com", "alice@example.com"]
    finally:
        second.quit()
        third.quit()


def test_host_prefixed_cookies_log_in_end_to_end(browser, log_dir, ports, op, upstream, wasm):
    """`__Host-` cookie names (the defence against cookie tossing from a sibling subdomain):
    Chromium drops a `__Host-` cookie unless it is Secure, on Path=/ and without Domain, so
    the login cookie must follow those rules as well as the session cookie. Served on
    http://localhost, which Chromium treats as a secure context for Secure cookies."""
    e = h.Envoy(log_dir, "envoy-hostprefix", ports["hostprefix"], op.port, upstream.port,
                concurrency=1, overrides={"cookie_name": "__Host-oidc", "cookie_secure": True,
                                          "cookie_domains": [], "cookie_path": "/"})
    try:
        wd = browser
        base = "http://localhost:%d" % e.port
        wd.get(base + "/host-prefixed?x=1")
        wd.wait_for(lambda: wd.url().startswith(base + "/host-prefixed")
                    or "login-form" in wd.source() or "consent-form" in wd.source(),
                    what="app or OP form")
        if "login-form" in wd.source():
            wd.type("#login", "alice@example.com")
            wd.type("#password", h.PASSWORD)
            wd.click("#submit")
            wd.wait_for(lambda: "consent-form" in wd.source() or wd.url().startswith(base),
                        what="next")
        if "consent-form" in wd.source():
            wd.click("#submit")
        wd.wait_for(lambda: wd.url().startswith(base + "/host-prefixed") and "Signed in as" in wd.source(),
                    what="app behind __Host- cookies")
        assert wd.url() == base + "/host-prefixed?x=1"
        assert "login_expired" not in wd.source()
        cookies = {c["name"]: c for c in wd.cookies()}
        assert "__Host-oidc" in cookies, list(cookies)
        assert cookies["__Host-oidc"]["secure"] is True
        assert cookies["__Host-oidc"]["path"] == "/"
        assert not any(n.startswith("__Host-oidc_csrf_") for n in cookies), list(cookies)
    finally:
        e.stop()


def _op_sign_out(wd, op):
    """Ends the browser's session at the OP (its own end-session page, confirmed)."""
    wd.get(op.issuer + "/session/end")
    wd.wait_for(lambda: 'id="logout"' in wd.source(), what="OP sign-out page")
    wd.click("#logout")
    wd.wait_for(lambda: "op.logoutForm" not in wd.source(), what="OP signed out")


def test_a_three_chunk_session_works_and_shrinks_cleanly(browser, log_dir, ports, op, upstream, wasm):
    """carol is in 200 groups: with her ID token kept (pass_authorization_header) the session
    spans three cookies, each under the browser's 4 KB. Chromium keeps and sends all three;
    the upstream gets her identity and token. Then alice logs in with the same browser: her
    session needs one cookie, and the two stale chunks are cleared."""
    e = h.Envoy(log_dir, "envoy-chunks", ports["chunks"], op.port, upstream.port, concurrency=1,
                overrides={"pass_authorization_header": True, "pass_access_token": True})
    try:
        wd = browser
        _op_sign_out(wd, op)
        _login_in_browser(wd, e.base + "/big?user=carol", user="carol@example.com")
        wd.wait_for(lambda: wd.url().startswith(e.base + "/big") and "Signed in as" in wd.source(),
                    what="app as carol")
        assert wd.script("return document.getElementById('email').textContent;") == "carol@example.com"
        cookies = {c["name"]: c for c in wd.cookies() if c["name"].startswith("_oauth2_proxy")}
        assert set(cookies) == {"_oauth2_proxy", "_oauth2_proxy_1", "_oauth2_proxy_2"}, list(cookies)
        assert cookies["_oauth2_proxy"]["value"].startswith("3.3.")
        for c in cookies.values():
            assert len(c["name"]) + len(c["value"]) < 4096 and c["httpOnly"] is True, c["name"]
        # Each request carries all three; the upstream sees none of them, and carol's token.
        src = wd.source()
        assert "_oauth2_proxy" not in src
        api = wd.script("""return fetch('/api/who', {headers: {'Accept': 'application/json'}})
            .then(r => r.json()).then(j => [j.identity['x-forwarded-email'],
                j.headers.filter(h => h[0] === 'authorization').length]);""")
        assert api == ["carol@example.com", 1], api
        # alice in the same browser: the provider's session first, then a new login.
        _op_sign_out(wd, op)
        wd.get(e.base + "/oauth2/start?rd=%2Fsmall")
        wd.wait_for(lambda: "login-form" in wd.source(), what="OP login form")
        wd.type("#login", "alice@example.com")
        wd.type("#password", h.PASSWORD)
        wd.click("#submit")
        wd.wait_for(lambda: "consent-form" in wd.source() or wd.url().startswith(e.base), what="next")
        if "consent-form" in wd.source():
            wd.click("#submit")
        wd.wait_for(lambda: wd.url().startswith(e.base + "/small") and "Signed in as" in wd.source(),
                    what="app as alice")
        assert wd.script("return document.getElementById('email').textContent;") == "alice@example.com"
        names = sorted(c["name"] for c in wd.cookies() if c["name"].startswith("_oauth2_proxy"))
        assert names == ["_oauth2_proxy"], names
    finally:
        e.stop()
