#!/usr/bin/env python3
"""Tiny demo/test upstream for oidc-filter.

Answers every request (any method, any path) with the request it received: an HTML page by
default, JSON when the client asks for it (Accept: application/json, or ?format=json).
The identity headers the filter adds (x-forwarded-email, x-auth-request-email, ...) are shown
first, so a user sees at a glance who they are logged in as.

Usage: upstream.py [--port 8081] [--host 127.0.0.1]   (or env UPSTREAM_PORT)
Standard library only.
"""

import argparse
import html
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

IDENTITY_HEADERS = (
    "x-forwarded-email",
    "x-forwarded-user",
    "x-forwarded-preferred-username",
    "x-auth-request-email",
    "x-auth-request-user",
    "x-auth-request-preferred-username",
)


class Handler(BaseHTTPRequestHandler):
    server_version = "oidc-filter-demo-upstream/1.0"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quieter, one line per request, no headers
        if not self.server.quiet:
            sys.stderr.write("upstream: %s %s\n" % (self.command, urlsplit(self.path).path))

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = [(k.lower(), v) for k, v in self.headers.items()]
        url = urlsplit(self.path)
        info = {
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": headers,
            "identity": {k: v for k, v in headers if k in IDENTITY_HEADERS},
            "body_length": len(body),
        }
        accept = self.headers.get("accept", "")
        want_json = "json" in parse_qs(url.query).get("format", []) or (
            "application/json" in accept and "text/html" not in accept
        )
        if want_json:
            out = json.dumps(info, indent=2).encode()
            ctype = "application/json"
        else:
            out = render_html(info).encode()
            ctype = "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(out)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer


def render_html(info):
    ident = info["identity"]
    email = ident.get("x-forwarded-email") or ident.get("x-auth-request-email")
    user = ident.get("x-forwarded-preferred-username") or ident.get(
        "x-auth-request-preferred-username") or ident.get("x-forwarded-user")
    if email:
        who = "<p class=who id=who>Signed in as <strong id=email>%s</strong>%s</p>" % (
            html.escape(email), " (%s)" % html.escape(user) if user else "")
    else:
        who = "<p class=who id=who>No identity headers: this request was not authenticated by oidc-filter.</p>"
    rows = "\n".join(
        "<tr%s><th>%s</th><td>%s</td></tr>" % (
            " class=ident" if k in IDENTITY_HEADERS else "", html.escape(k), html.escape(v))
        for k, v in sorted(info["headers"], key=lambda kv: (kv[0] not in IDENTITY_HEADERS, kv[0]))
    )
    target = info["path"] + ("?" + info["query"] if info["query"] else "")
    return """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>oidc-filter demo upstream</title>
<style>
body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}
.who{font-size:1.4em;padding:.6em;background:#eef6ee;border:1px solid #9c9}
table{border-collapse:collapse;width:100%%}th,td{text-align:left;padding:.2em .5em;border-bottom:1px solid #ddd;font-family:monospace;word-break:break-all}
tr.ident{background:#ffd}
</style></head><body>
<h1>Protected upstream</h1>
%s
<p>%s <code>%s</code></p>
<p><a href="/oauth2/sign_out" id=signout>Sign out</a></p>
<h2>Request headers received by the upstream</h2>
<table>%s</table>
</body></html>
""" % (who, html.escape(info["method"]), html.escape(target), rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(os.environ.get("UPSTREAM_PORT", "8081")))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    srv.daemon_threads = True
    srv.quiet = args.quiet
    sys.stderr.write("upstream: listening on http://%s:%d\n" % (args.host, args.port))
    sys.stderr.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


if __name__ == "__main__":
    main()
