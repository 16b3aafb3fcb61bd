#!/usr/bin/env python3
"""Turns istio/*.yaml (WasmPlugin, ServiceEntry, DestinationRule, Gateway, VirtualService) into
the Envoy config an Istio ingress gateway runs, so it can be tested in a real Envoy where no
Istio control plane can run.

What it mirrors, from the Istio sources (istio/istio):
- pilot/pkg/model/extensions.go, convertToWasmPluginWrapper / buildVMConfig: the filter is
  named `<namespace>.<name>`; its Wasm config has `config.name` the same, `root_id` =
  `pluginName`, `configuration` = `pluginConfig` as JSON in a StringValue, the V8 runtime,
  `vmConfig.env` as `environment_variables` (INLINE in `key_values`, HOST in
  `host_env_keys`) next to the ISTIO_META_WASM_* keys istiod adds, and the `url` as a remote
  data source.
- pilot/pkg/networking/core/extension/wasmplugin.go, toEnvoyHTTPFilter: the HTTP filter holds
  no config, only `config_discovery` (ECDS) with type URLs Wasm and RBAC and an
  `initial_fetch_timeout` of 0 (the proxy waits for it: it may be critical for security).
  Istio serves ECDS over ADS; here it is a file (`path_config_source`), the same
  DiscoveryResponse.
- pkg/wasm/convert.go (istio-agent): the remote module is pulled and the config rewritten to a
  local file; when the pull fails and the plugin is not FAIL_OPEN, the agent NACKs and Envoy
  never gets a config for the filter. `--module URL=FILE` stands for the agent's cache; a url
  without one is that failure: ecds.json then holds no resource.
- ServiceEntry x port → cluster `outbound|<port>||<host>` (LOGICAL_DNS for resolution DNS),
  DestinationRule `tls` (SIMPLE) → UpstreamTlsContext with `sni`, the CA (`caCertificates`, else
  the system's) and `subjectAltNames` as the names the certificate must carry.
- Gateway servers → listeners `0.0.0.0_<port>` (HTTPS: DownstreamTlsContext from
  `credentialName`, `--credential NAME=CERT,KEY` standing for SDS), VirtualServices bound to the
  gateway → a route per host, each destination a cluster `outbound|<port>||<host>`.

Usage:
  python3 istio/translate.py MANIFEST... --out DIR [--module URL=FILE] [--endpoint HOST=IP:PORT]
      [--credential NAME=CERT,KEY] [--port GATEWAY_PORT=LOCAL_PORT] [--admin-port N]
Writes DIR/envoy.json (the bootstrap) and DIR/ecds.json (the filter's ECDS resource).
"""

import argparse
import json
import os
import sys

import yaml

WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


def load(paths):
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            out.extend(d for d in yaml.safe_load_all(f) if d)
    return out


def kind(docs, k):
    return [d for d in docs if d.get("kind") == k]


def ns(d):
    return d["metadata"].get("namespace", "default")


def pairs(items, what):
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            sys.exit("translate: %s must be KEY=VALUE: %r" % (what, item))
        out[k] = v
    return out


def wasm_plugin(p, modules, resource_version="1"):
    """The TypedExtensionConfig of a WasmPlugin, after istio-agent's conversion; None when its
    module could not be had (and the plugin is not FAIL_OPEN)."""
    spec = p["spec"]
    name = "%s.%s" % (ns(p), p["metadata"]["name"])
    key_values = {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": resource_version}
    if spec.get("imagePullPolicy"):
        key_values["ISTIO_META_WASM_IMAGE_PULL_POLICY"] = spec["imagePullPolicy"]
    host_env_keys = []
    for e in (spec.get("vmConfig") or {}).get("env") or []:
        if e.get("valueFrom") == "HOST":
            host_env_keys.append(e["name"])
        else:
            key_values[e["name"]] = e.get("value", "")
    env = {"key_values": key_values}
    if host_env_keys:
        env["host_env_keys"] = host_env_keys
    module = modules.get(spec["url"])
    fail_open = spec.get("failStrategy") == "FAIL_OPEN"
    if module is None or not os.path.exists(module):
        if not fail_open:
            return name, None
        code = {"remote": {"http_uri": {"uri": spec["url"], "cluster": "_", "timeout": "30s"}}}
    else:
        code = {"local": {"filename": os.path.abspath(module)}}
    config = {
        "name": name,
        "root_id": spec.get("pluginName", ""),
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": json.dumps(spec.get("pluginConfig") or {})},
        "fail_open": fail_open,
        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": code,
                      "environment_variables": env},
    }
    return name, {"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                  "name": name, "typed_config": {"@type": WASM, "config": config}}


def cluster(name, host, port, endpoints, dns, tls=None):
    ip, _, p = endpoints.get(host, "%s:%d" % (host, port)).rpartition(":")
    c = {
        "name": name,
        "type": "LOGICAL_DNS" if dns else "STATIC",
        "dns_lookup_family": "V4_ONLY",
        "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": int(p)}}}}]}]},
    }
    if not dns:
        del c["dns_lookup_family"]
    if tls:
        c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return c


def upstream_tls(rule_tls):
    """DestinationRule `tls` (SIMPLE) as Envoy's UpstreamTlsContext."""
    if not rule_tls or rule_tls.get("mode") not in ("SIMPLE",):
        return None
    validation = {"trusted_ca": {"filename": rule_tls.get("caCertificates") or SYSTEM_CA}}
    sans = rule_tls.get("subjectAltNames") or []
    if sans:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "DNS", "matcher": {"exact": s}} for s in sans]
    out = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
           "common_tls_context": {"validation_context": validation}}
    if rule_tls.get("sni"):
        out["sni"] = rule_tls["sni"]
    return out


def rule_tls_for(rules, host, port):
    for r in rules:
        if r["spec"].get("host") != host:
            continue
        tp = r["spec"].get("trafficPolicy") or {}
        for pl in tp.get("portLevelSettings") or []:
            if (pl.get("port") or {}).get("number") == port and pl.get("tls"):
                return pl["tls"]
        if tp.get("tls"):
            return tp["tls"]
    return None


def translate(docs, modules, endpoints, credentials, ports, admin_port, out_dir, listen):
    ecds_path = os.path.join(out_dir, "ecds.json")
    filters, resources = [], []
    for p in kind(docs, "WasmPlugin"):
        if (p["spec"].get("type") or "HTTP") != "HTTP":
            continue
        name, res = wasm_plugin(p, modules)
        filters.append({"name": name, "config_discovery": {
            "config_source": {"path_config_source": {"path": ecds_path},
                              "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
            "type_urls": [WASM, RBAC]}})
        if res is not None:
            resources.append(res)
        else:
            print("translate: cannot get the module of %s (%s): no config for its filter, as "
                  "istio-agent NACKs it (FAIL_CLOSE)" % (name, p["spec"]["url"]), file=sys.stderr)
    rules = kind(docs, "DestinationRule")
    clusters = {}
    for se in kind(docs, "ServiceEntry"):
        dns = se["spec"].get("resolution") == "DNS"
        for host in se["spec"]["hosts"]:
            for port in se["spec"].get("ports") or []:
                n = "outbound|%d||%s" % (port["number"], host)
                clusters[n] = cluster(n, host, port["number"], endpoints, dns,
                                      upstream_tls(rule_tls_for(rules, host, port["number"])))
    listeners = []
    for gw in kind(docs, "Gateway"):
        gw_ref = "%s/%s" % (ns(gw), gw["metadata"]["name"])
        for server in gw["spec"]["servers"]:
            port = server["port"]["number"]
            vhosts = []
            for vs in kind(docs, "VirtualService"):
                bound = [g if "/" in g else "%s/%s" % (ns(vs), g) for g in vs["spec"].get("gateways", [])]
                if gw_ref not in bound:
                    continue
                routes = []
                for http in vs["spec"].get("http") or []:
                    dest = http["route"][0]["destination"]
                    dport = (dest.get("port") or {}).get("number", 80)
                    cn = "outbound|%d||%s" % (dport, dest["host"])
                    clusters.setdefault(cn, cluster(cn, dest["host"], dport, endpoints,
                                                    dest["host"] not in endpoints))
                    routes.append({"match": {"prefix": "/"}, "route": {"cluster": cn}})
                hosts = vs["spec"]["hosts"]
                vhosts.append({"name": "%s:%d" % (hosts[0], port),
                               "domains": [d for h in hosts for d in (h, "%s:*" % h)],
                               "routes": routes})
            hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                   "stat_prefix": "outbound_0.0.0.0_%d" % port,
                   "use_remote_address": True,
                   "route_config": {"name": "http.%d" % port, "virtual_hosts": vhosts},
                   "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
                       "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
            chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                  "typed_config": hcm}]}
            tls = server.get("tls") or {}
            if server["port"].get("protocol") == "HTTPS":
                cert, _, key = credentials.get(tls.get("credentialName", ""), ",").partition(",")
                if not cert:
                    sys.exit("translate: no --credential for %s" % tls.get("credentialName"))
                chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": {"tls_certificates": [{
                        "certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]}}}
            listeners.append({"name": "0.0.0.0_%d" % port, "address": {"socket_address": {
                "address": listen, "port_value": int(ports.get(str(port), port))}},
                "filter_chains": [chain]})
    bootstrap = {
        # As istio-agent writes it for an ingress gateway pod (xDS needs a node).
        "node": {"id": "router~127.0.0.1~istio-ingressgateway-0.istio-system~"
                       "istio-system.svc.cluster.local",
                 "cluster": "istio-ingressgateway.istio-system"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": list(clusters.values())},
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "envoy.json"), "w", encoding="utf-8") as f:
        json.dump(bootstrap, f, indent=1)
    # Written last and whole: Envoy watches the file (a move, as xDS over files wants).
    tmp = ecds_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"version_info": "1", "resources": resources}, f, indent=1)
    os.replace(tmp, ecds_path)
    return bootstrap


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("manifests", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--module", action="append", metavar="URL=FILE")
    ap.add_argument("--endpoint", action="append", metavar="HOST=IP:PORT")
    ap.add_argument("--credential", action="append", metavar="NAME=CERT,KEY")
    ap.add_argument("--port", action="append", metavar="GATEWAY_PORT=LOCAL_PORT")
    ap.add_argument("--admin-port", type=int, default=15000)
    ap.add_argument("--listen", default="127.0.0.1")
    a = ap.parse_args(argv)
    translate(load(a.manifests), pairs(a.module, "--module"), pairs(a.endpoint, "--endpoint"),
              pairs(a.credential, "--credential"), pairs(a.port, "--port"), a.admin_port,
              a.out, a.listen)


if __name__ == "__main__":
    main()
