#!/usr/bin/env python3
"""Render a runnable Envoy config from envoy/envoy.yaml with other ports, paths or filter settings.

envoy/envoy.yaml is the one readable source of truth; the demo and the e2e tests start Envoy
from a copy of it with the ports and the absolute wasm path filled in (written as JSON, which
Envoy reads like YAML).

  render_config.py [--listen-port 8080] [--admin-port 9901] [--idp-port 9000]
                   [--upstream-port 8081] [--wasm dist/oidc_filter.wasm]
                   [--set key=JSON ...] [-o out.json]

--set overrides one key of the plugin configuration (value parsed as JSON, else a string),
e.g. --set cookie_expire='"10s"' --set set_xauthrequest=false.
Needs PyYAML (installed into envoy/.venv by install.sh).
"""

import argparse
import copy
import json
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "envoy.yaml")
WASM_FILTER = "envoy.filters.http.wasm"


def load_base(path=BASE):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _wasm_config(cfg):
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for nf in chain["filters"]:
                for hf in nf["typed_config"].get("http_filters", []):
                    if hf["name"] == WASM_FILTER:
                        return hf["typed_config"]["config"]
    raise KeyError("no %s filter in config" % WASM_FILTER)


def plugin_config(cfg):
    """The oidc-filter JSON configuration (a dict) of an Envoy config dict."""
    return json.loads(_wasm_config(cfg)["configuration"]["value"])


def _set_cluster_port(cfg, name, port):
    for c in cfg["static_resources"]["clusters"]:
        if c["name"] == name:
            for ep in c["load_assignment"]["endpoints"]:
                for lb in ep["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"]["port_value"] = port
            return
    raise KeyError("no cluster %s" % name)


def add_cluster_like(cfg, model, name, port):
    """Add a cluster `name` like cluster `model`, with its endpoint on 127.0.0.1:`port`."""
    for c in cfg["static_resources"]["clusters"]:
        if c["name"] == model:
            new = copy.deepcopy(c)
            new["name"] = name
            new["load_assignment"]["cluster_name"] = name
            cfg["static_resources"]["clusters"].append(new)
            _set_cluster_port(cfg, name, port)
            return
    raise KeyError("no cluster %s" % model)


def render(listen_port=8080, admin_port=9901, idp_port=9000, upstream_port=8081,
           wasm_path=None, overrides=None, base=None):
    """Return an Envoy config dict: envoy.yaml with ports, wasm path and plugin settings replaced.

    The issuer URL follows idp_port (http://127.0.0.1:<idp_port>) unless overridden.
    overrides: dict of plugin-config keys to set; a value of None removes the key.
    """
    cfg = copy.deepcopy(base if base is not None else load_base())
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listen_port
    _set_cluster_port(cfg, "idp", idp_port)
    if any(c["name"] == "upstream" for c in cfg["static_resources"]["clusters"]):
        _set_cluster_port(cfg, "upstream", upstream_port)
    wasm = _wasm_config(cfg)
    if wasm_path:
        wasm["vm_config"]["code"]["local"]["filename"] = os.path.abspath(wasm_path)
    plugin = plugin_config(cfg)
    plugin["oidc_issuer_url"] = "http://127.0.0.1:%d" % idp_port
    for k, v in (overrides or {}).items():
        if v is None:
            plugin.pop(k, None)
        else:
            plugin[k] = v
    wasm["configuration"]["value"] = json.dumps(plugin, indent=2)
    return cfg


def write(cfg, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description="Render envoy/envoy.yaml with other ports/settings.")
    ap.add_argument("--listen-port", type=int, default=8080)
    ap.add_argument("--admin-port", type=int, default=9901)
    ap.add_argument("--idp-port", type=int, default=9000)
    ap.add_argument("--upstream-port", type=int, default=8081)
    ap.add_argument("--wasm", default=None, help="path of oidc_filter.wasm (made absolute)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    ap.add_argument("-o", "--output", default="-")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except ValueError:
            overrides[key] = raw
    cfg = render(args.listen_port, args.admin_port, args.idp_port, args.upstream_port,
                 args.wasm, overrides)
    if args.output == "-":
        json.dump(cfg, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        write(cfg, args.output)


if __name__ == "__main__":
    main()
