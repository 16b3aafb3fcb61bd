"""The filter's metrics in a real Envoy's /stats/prometheus: decisions by reason and provider,
callouts by endpoint and outcome, and callout latency."""

import re
import time

import pytest
import requests

import harness as h


def scrape(envoy):
    r = requests.get("http://127.0.0.1:%d/stats/prometheus" % envoy.admin_port, timeout=5)
    assert r.status_code == 200
    return r.text


def value(text, name, **labels):
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    found = False
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{([^}]*)\})? ([0-9.e+]+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
            found = True
    return total if found else None


def eventually(envoy, pred, what):
    # Counts reach the host's counters on the filter's 1 s tick.
    deadline = time.monotonic() + 10
    while True:
        text = scrape(envoy)
        if pred(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError("%s; metrics:\n%s" % (what, "\n".join(
                l for l in text.splitlines() if "oidc_filter" in l)))
        time.sleep(0.3)


def test_decisions_and_callouts_are_counted_with_labels(envoy):
    before = scrape(envoy)
    base = {k: value(before, "oidc_filter_decisions_total", reason=k, provider="default") or 0
            for k in ("login_redirect", "login_complete", "session", "unauthenticated")}
    with requests.Session() as s:
        h.login_ok(s, envoy, "/metrics-test")
        for _ in range(3):
            h.upstream_view(h.get_json(s, envoy, "/x"))
    r = h.get_json(requests.Session(), envoy, "/x")
    assert r.status_code == 401

    def counted(text):
        got = {k: (value(text, "oidc_filter_decisions_total", reason=k, provider="default") or 0)
               - base[k] for k in base}
        return got["login_redirect"] >= 1 and got["login_complete"] >= 1 \
            and got["session"] >= 3 and got["unauthenticated"] >= 1
    text = eventually(envoy, counted, "decisions counted by reason and provider")
    # Callouts: discovery and keys at start, one token call per login, each with its latency.
    for endpoint in ("discovery", "jwks", "token"):
        assert value(text, "oidc_filter_callouts_total", endpoint=endpoint, outcome="ok") >= 1, endpoint
    assert "# TYPE oidc_filter_callout_duration_milliseconds histogram" in text
    # Histograms reach the admin page at Envoy's stats flush (every 5 s by default).
    eventually(envoy, lambda t: (value(t, "oidc_filter_callout_duration_milliseconds_count",
                                       endpoint="token") or 0) >= 1, "token latency recorded")
    # Prometheus conventions: no envoy_ prefix, no wasmcustom, labels not left in names.
    # (Envoy's own envoy_wasm_* stats of the plugin aside.)
    names = {l.split("{")[0].split(" ")[0] for l in text.splitlines()
             if "oidc_filter" in l and not l.startswith("#") and not l.startswith("envoy_")}
    assert "oidc_filter_decisions_total" in names
    assert all(n.startswith("oidc_filter_") and "reason_" not in n and "provider_" not in n
               for n in names), sorted(names)
