"""Checks of the istio/ deployment files and the image builder, without a cluster.

- every YAML file under istio/ parses, with no duplicate keys;
- every Istio resource validates against the openAPIV3Schema of its kind/version in
  <repo>/../shared/istio/crds.gen.yaml (OpenAPI specifics converted for jsonschema, unknown
  fields rejected as `kubectl apply` does), plus the CRDs' CEL rules (x-kubernetes-validations)
  re-implemented in Python, with a check that every rule in the schemas is one we implement;
- the files of each manifest set agree (env names, Secret keys, clusters, hosts, gateways);
- each pluginConfig passes the filter's own config validation (`oidc-filter check`);
- istio/build-image.py makes a valid, reproducible OCI image that Istio's puller accepts.
"""

from __future__ import annotations

import ast
import base64
import copy
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

ISTIO = Path(__file__).resolve().parent.parent
REPO = ISTIO.parent
SHARED = Path(os.environ.get("OIDC_FILTER_SHARED", REPO.parent / "shared"))
CRDS_FILE = SHARED / "istio" / "crds.gen.yaml"
WASMPLUGIN_CRD_FILE = SHARED / "istio" / "wasmplugin-crd.yaml"
SEED_DIR = SHARED / "seed"
BUILD_IMAGE = ISTIO / "build-image.py"

SKIP_DIRS = {".venv", "__pycache__", ".pytest_cache", "dist", "target", "node_modules"}

# A valid secret for the filter: base64 of 32 bytes (also fine as a client secret).
DUMMY_SECRET = base64.urlsafe_b64encode(bytes(range(1, 33))).decode()


# --------------------------------------------------------------------------------------
# YAML loading: PyYAML's SafeLoader, but a repeated mapping key is an error (PyYAML would
# silently keep the last one; Kubernetes' strict decoding rejects it).

class StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping_no_dups(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_dups)


def load_yaml_docs(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]


def yaml_files() -> list[Path]:
    out = []
    for root, dirs, files in os.walk(ISTIO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith((".yaml", ".yml")):
                out.append(Path(root) / name)
    return out


YAML_FILES = yaml_files()


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def _collect_resources():
    """(file, index, doc) for every document; files that do not parse are left to
    test_yaml_parses."""
    out = []
    for path in YAML_FILES:
        try:
            docs = load_yaml_docs(path)
        except yaml.YAMLError:
            continue
        for i, doc in enumerate(docs):
            out.append((path, i, doc))
    return out


RESOURCES = _collect_resources()
ISTIO_GROUPS = {"extensions.istio.io", "networking.istio.io", "security.istio.io", "telemetry.istio.io"}


def is_patch_file(path: Path) -> bool:
    return "patch" in path.name or "patch" in path.parent.name


def group_version(doc) -> tuple[str, str]:
    api = doc.get("apiVersion", "")
    return tuple(api.split("/", 1)) if "/" in api else ("", api)


ISTIO_RESOURCES = [r for r in RESOURCES if isinstance(r[2], dict) and group_version(r[2])[0] in ISTIO_GROUPS]
WASMPLUGINS = [r for r in ISTIO_RESOURCES if r[2].get("kind") == "WasmPlugin"]


def res_id(r) -> str:
    path, i, doc = r
    return f"{rel(path)}#{i}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# --------------------------------------------------------------------------------------
# The shared folder (CRD schemas, seed article): in CI a copy sits beside the clone.

@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not CRDS_FILE.is_file():
        pytest.fail(
            f"shared folder not found: expected {CRDS_FILE} (the repository's sibling "
            f"'shared/' folder; set OIDC_FILTER_SHARED to point elsewhere)", pytrace=False)
    return SHARED


@pytest.fixture(scope="session")
def crds(shared_dir):
    """(group, kind) -> {version: version entry} from crds.gen.yaml."""
    out = {}
    with open(CRDS_FILE, encoding="utf-8") as f:
        for d in yaml.safe_load_all(f):
            if not d or d.get("kind") != "CustomResourceDefinition":
                continue
            spec = d["spec"]
            out[(spec["group"], spec["names"]["kind"])] = {v["name"]: v for v in spec["versions"]}
    assert out, f"no CustomResourceDefinition in {CRDS_FILE}"
    return out


def crd_version(crds, doc):
    group, version = group_version(doc)
    kind = doc.get("kind")
    versions = crds.get((group, kind))
    assert versions is not None, f"no CRD for {kind} in group {group!r} in {CRDS_FILE}"
    assert version in versions, f"{kind}: version {version!r} not in CRD (has {sorted(versions)})"
    v = versions[version]
    assert v.get("served"), f"{kind} {version} is not served"
    assert not v.get("deprecated"), f"{kind} {version} is deprecated: use {sorted(versions)}"
    return v


# --------------------------------------------------------------------------------------
# OpenAPI v3 (Kubernetes structural schema) -> JSON Schema (draft 4)

def to_jsonschema(node):
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k.startswith("x-kubernetes-") or k in ("nullable", "description", "example", "externalDocs"):
            continue
        if k == "properties":
            out[k] = {pk: to_jsonschema(pv) for pk, pv in v.items()}
        elif k in ("items", "not"):
            out[k] = to_jsonschema(v)
        elif k == "additionalProperties":
            out[k] = to_jsonschema(v) if isinstance(v, dict) else v
        elif k in ("anyOf", "oneOf", "allOf"):
            out[k] = [to_jsonschema(x) for x in v]
        else:
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    # Structural schemas drop unknown fields; `kubectl apply` (strict field validation)
    # rejects them. Treat them as errors: they are typos.
    if (out.get("type") == "object" and "properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def root_jsonschema(openapi: dict) -> dict:
    s = to_jsonschema(openapi)
    s.setdefault("properties", {})
    s["properties"].update({
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
    })
    s["type"] = "object"
    s["additionalProperties"] = False
    return s


DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def metadata_errors(doc) -> list[str]:
    md = doc.get("metadata")
    if not isinstance(md, dict):
        return ["metadata: missing"]
    errs = []
    name = md.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errs.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    ns = md.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not DNS1123_LABEL.match(ns)):
        errs.append(f"metadata.namespace: {ns!r} is not a DNS-1123 label")
    for field in ("labels", "annotations"):
        for k, v in (md.get(field) or {}).items():
            if not isinstance(v, str):
                errs.append(f"metadata.{field}.{k}: value must be a string")
    return errs


# --------------------------------------------------------------------------------------
# CEL rules of the CRDs, re-implemented. Keyed by the rule text (whitespace-normalised).
# A rule in a schema that is not here makes validation fail, and
# test_cel_rules_all_implemented lists them: a new rule cannot be skipped silently.

def norm_rule(rule: str) -> str:
    return " ".join(rule.split())


_SCHEME_CHARS = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")
# Characters Go's url package refuses in a host name (it allows letters, digits, -._~,
# the sub-delims, ':', '[', ']', '<', '>', '"' and any non-ASCII byte).
_HOST_BAD = set(" {}|\\^`#?/%@")


def go_parse_request_uri(s: str) -> str:
    """Scheme of `s` as Go's net/url.ParseRequestURI (behind CEL's isURL()/url()) sees it;
    ValueError where Go returns an error. Covers what that parser checks: control
    characters, scheme syntax, request-URI form, the host's characters and the port."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):
        raise ValueError("invalid control character in URL")
    scheme, rest = "", s
    for i, c in enumerate(s):
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and (c.isdigit() or c in "+-."):
            if i == 0:
                break
            continue
        if c == ":":
            if i == 0:
                raise ValueError("missing protocol scheme")
            scheme, rest = s[:i], s[i + 1:]
        break
    rest = rest.split("?", 1)[0]
    if not rest.startswith("/"):
        if scheme:
            return scheme.lower()  # opaque URL, e.g. "mailto:x"
        raise ValueError("invalid URI for request")
    if scheme and rest.startswith("//"):
        authority = rest[2:].split("/", 1)[0]
        host = authority.rsplit("@", 1)[-1]
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                raise ValueError("missing ']' in host")
            port = host[end + 1:]
            if port and not re.fullmatch(r":[0-9]*", port):
                raise ValueError("invalid port")
        else:
            if ":" in host:
                host, port = host.rsplit(":", 1)
                if not re.fullmatch(r"[0-9]*", port):
                    raise ValueError("invalid port")
            if any(c in _HOST_BAD for c in host):
                raise ValueError("invalid character in host name")
    if re.search(r"%(?![0-9A-Fa-f]{2})", rest):
        raise ValueError("invalid URL escape")
    return scheme.lower()


def cel_is_url(s: str) -> bool:
    try:
        go_parse_request_uri(s)
        return True
    except ValueError:
        return False


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def cel_duration(s: str) -> float:
    """Seconds, parsed like Go's time.ParseDuration (what CEL's duration() uses)."""
    if not isinstance(s, str):
        raise ValueError("duration must be a string")
    body = s[1:] if s[:1] in "+-" else s
    sign = -1.0 if s.startswith("-") else 1.0
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"invalid duration {s!r}")
    total, pos = 0.0, 0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if not m or m.group(1) in ("", "."):
            raise ValueError(f"invalid duration {s!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def _has(obj, field):
    return isinstance(obj, dict) and field in obj


def _cel_substring(s: str, start: int, end: int) -> str:
    if not 0 <= start <= end <= len(s):
        raise IndexError("substring out of range")  # CEL: evaluation error
    return s[start:end]


_URL_SCHEMES = ["", "http", "https", "oci", "file"]


def _url_rule(s):
    if cel_is_url(s):
        return go_parse_request_uri(s) in _URL_SCHEMES
    return cel_is_url("http://" + s) and go_parse_request_uri("http://" + s) in _URL_SCHEMES


_PORT_NAME = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")

CEL_RULES = {norm_rule(k): v for k, v in {
    # selectors (WasmPlugin, DestinationRule, ServiceEntry)
    'self.all(key, !key.contains("*"))': lambda self: all("*" not in k for k in self),
    'self.all(key, key.size() != 0)': lambda self: all(len(k) != 0 for k in self),
    '!self.contains("*")': lambda self: "*" not in self,
    # WasmPlugin
    '(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1':
        lambda self: sum(_has(self, f) for f in ("selector", "targetRef", "targetRefs")) <= 1,
    'self.size() == 0': lambda self: len(self) == 0,
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : '
    '(isURL("http://" + self) && url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])':
        _url_rule,
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)':
        lambda self: self.get("valueFrom", "") != "HOST" or "value" not in self,
    # durations (DestinationRule, VirtualService)
    "duration(self) >= duration('1ms')": lambda self: cel_duration(self) >= cel_duration("1ms"),
    # Gateway
    '(has(self.tlsCertificates) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1':
        lambda self: _has(self, "tlsCertificates") + _has(self, "credentialNames") <= 1,
    '(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1':
        lambda self: _has(self, "credentialName") + _has(self, "credentialNames") <= 1,
    '(has(self.credentialNames) ? 1 : 0) + (has(self.tlsCertificates) ? 1 : 0) <= 1':
        lambda self: _has(self, "credentialNames") + _has(self, "tlsCertificates") <= 1,
    # ServiceEntry
    '(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1':
        lambda self: _has(self, "workloadSelector") + _has(self, "endpoints") <= 1,
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && '
    '!((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))':
        lambda self: not (any("/" in a for a in self.get("addresses", []))
                          and self.get("resolution", "NONE") not in ("STATIC", "NONE")),
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        lambda self: "endpoints" not in self if self.get("resolution", "NONE") == "NONE" else True,
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? '
    '((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true':
        lambda self: len(self.get("endpoints", [])) <= 1 if self.get("resolution", "") == "DNS_ROUND_ROBIN" else True,
    'has(self.address) || has(self.network)': lambda self: _has(self, "address") or _has(self, "network"),
    '(has(self.address) ? self.address : "").startsWith("unix://") ? !has(self.ports) : true':
        lambda self: "ports" not in self if self.get("address", "").startswith("unix://") else True,
    'self.startsWith("unix://") ? (self.substring(7, 8) == "/" || self.substring(7, 8) == "@") : true':
        lambda self: _cel_substring(self, 7, 8) in ("/", "@") if self.startswith("unix://") else True,
    'self.startsWith("unix://") ? !self.endsWith("/") : true':
        lambda self: not self.endswith("/") if self.startswith("unix://") else True,
    'self.all(key, size(key) < 63 && key.matches("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$"))':
        lambda self: all(len(k) < 63 and _PORT_NAME.search(k) for k in self),
    '0 < self && self <= 65535': lambda self: 0 < self <= 65535,
    'self != "*"': lambda self: self != "*",
    'self.all(l1, self.exists_one(l2, l1.number == l2.number))':
        lambda self: all(sum(l2["number"] == l1["number"] for l2 in self) == 1 for l1 in self),
}.items()}

# Kinds whose CEL rules must all be implemented (those we ship, and WasmPlugin always).
CEL_KINDS = [
    ("extensions.istio.io", "WasmPlugin", "v1alpha1"),
    ("networking.istio.io", "ServiceEntry", "v1"),
    ("networking.istio.io", "DestinationRule", "v1"),
    ("networking.istio.io", "Gateway", "v1"),
    ("networking.istio.io", "VirtualService", "v1"),
]


def schema_rules(node, path="", out=None) -> list[tuple[str, str]]:
    """Every (path, normalised rule) in a schema, wherever it sits."""
    out = [] if out is None else out
    if isinstance(node, dict):
        for v in node.get("x-kubernetes-validations") or []:
            out.append((path, norm_rule(v["rule"])))
        for k, v in node.items():
            if k == "properties":
                for pk, pv in v.items():
                    schema_rules(pv, f"{path}.{pk}", out)
            elif k in ("items", "additionalProperties", "not"):
                schema_rules(v, f"{path}.{k}", out)
            elif k in ("anyOf", "oneOf", "allOf"):
                for i, x in enumerate(v):
                    schema_rules(x, f"{path}.{k}[{i}]", out)
    return out


def k8s_extension_errors(schema, value, path="") -> list[str]:
    """What jsonschema cannot check: CEL rules, list-type map/set uniqueness, int32."""
    errs = []
    if value is None or not isinstance(schema, dict):
        return errs
    for v in schema.get("x-kubernetes-validations") or []:
        rule = norm_rule(v["rule"])
        fn = CEL_RULES.get(rule)
        if fn is None:
            errs.append(f"{path or '.'}: CEL rule not implemented by these tests: {rule}")
            continue
        try:
            ok = bool(fn(value))
        except Exception as e:  # a CEL evaluation error rejects the object too
            ok, detail = False, f" (evaluation error: {e})"
        else:
            detail = ""
        if not ok:
            errs.append(f"{path or '.'}: {v.get('message', rule)}{detail}")
    list_type = schema.get("x-kubernetes-list-type")
    if isinstance(value, list) and list_type in ("map", "set"):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen = set()
        for item in value:
            k = (tuple(json.dumps(item.get(x), sort_keys=True) for x in keys) if list_type == "map"
                 else json.dumps(item, sort_keys=True))
            if k in seen:
                errs.append(f"{path}: duplicate entry {k} (x-kubernetes-list-type: {list_type})")
            seen.add(k)
    if schema.get("format") == "int32" and isinstance(value, int) and not -2**31 <= value < 2**31:
        errs.append(f"{path}: {value} out of int32 range")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if k in props:
                errs += k8s_extension_errors(props[k], v, f"{path}.{k}")
            elif isinstance(extra, dict):
                errs += k8s_extension_errors(extra, v, f"{path}[{k!r}]")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errs += k8s_extension_errors(schema["items"], item, f"{path}[{i}]")
    return errs


def validate_istio_resource(crds, doc) -> list[str]:
    v = crd_version(crds, doc)
    openapi = v["schema"]["openAPIV3Schema"]
    schema = root_jsonschema(openapi)
    validator = jsonschema.Draft4Validator(schema)
    errs = [f"{'.'.join(str(p) for p in e.absolute_path) or '.'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
    errs += metadata_errors(doc)
    errs += k8s_extension_errors(openapi, doc)
    return errs


def tls_name_errors(dr: dict) -> list:
    """What is wrong with a DestinationRule's TLS settings: every TLS origination (SIMPLE or
    MUTUAL, at the top or per port) must name the certificate it expects in subjectAltNames,
    or Envoy accepts any certificate a trusted CA issued for any name."""
    tp = dr.get("spec", {}).get("trafficPolicy") or {}
    settings = [("trafficPolicy.tls", tp.get("tls"))]
    settings += [(f"portLevelSettings[{i}].tls", pl.get("tls")) for i, pl in enumerate(tp.get("portLevelSettings") or [])]
    errs = []
    for where, tls in settings:
        if tls and tls.get("mode") in ("SIMPLE", "MUTUAL") and not tls.get("subjectAltNames"):
            errs.append(f"{dr['metadata']['name']}: {where}: mode {tls['mode']} without subjectAltNames")
    return errs


# ======================================================================================
# Tests: YAML

def test_yaml_files_found():
    names = {rel(p) for p in YAML_FILES}
    for expected in ("istio/wasmplugin.yaml", "istio/serviceentry.yaml", "istio/gateway-env-patch.yaml",
                     "istio/examples/prometheus/wasmplugin.yaml"):
        assert expected in names


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses_without_duplicate_keys(path):
    docs = load_yaml_docs(path)
    assert docs, f"{rel(path)}: no YAML document"
    for d in docs:
        assert isinstance(d, dict), f"{rel(path)}: a document is not a mapping"
        assert d.get("apiVersion") and d.get("kind"), f"{rel(path)}: apiVersion/kind missing"
        assert isinstance(d.get("metadata"), dict) and d["metadata"].get("name"), f"{rel(path)}: metadata.name missing"


def test_duplicate_key_loader_rejects_duplicates():
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'url'"):
        list(yaml.load_all("spec:\n  url: a\n  url: b\n", Loader=StrictLoader))
    assert list(yaml.load_all("a: 1\nb: {c: 2}\n", Loader=StrictLoader)) == [{"a": 1, "b": {"c": 2}}]


# ======================================================================================
# Tests: CRD schemas

def test_wasmplugin_crd_copy_matches_bundle(crds):
    with open(WASMPLUGIN_CRD_FILE, encoding="utf-8") as f:
        single = yaml.safe_load(f)
    versions = {v["name"]: v["schema"] for v in single["spec"]["versions"]}
    bundle = {n: v["schema"] for n, v in crds[("extensions.istio.io", "WasmPlugin")].items()}
    assert versions == bundle


@pytest.mark.parametrize("res", ISTIO_RESOURCES, ids=res_id)
def test_istio_resource_matches_crd_schema(crds, res):
    path, _, doc = res
    errs = validate_istio_resource(crds, doc)
    assert not errs, f"{res_id(res)}:\n  " + "\n  ".join(errs)


@pytest.mark.parametrize("group,kind,version", CEL_KINDS, ids=[k for _, k, _ in CEL_KINDS])
def test_cel_rules_all_implemented(crds, group, kind, version):
    """Every CEL rule of the kinds we ship is one CEL_RULES implements, so a rule added to
    the CRDs fails here instead of being skipped."""
    openapi = crds[(group, kind)][version]["schema"]["openAPIV3Schema"]
    present = schema_rules(openapi)
    missing = sorted({f"{p}: {r}" for p, r in present if r not in CEL_RULES})
    assert present, f"{kind}: no CEL rules found (schema layout changed?)"
    assert not missing, f"{kind}: CEL rules not implemented:\n  " + "\n  ".join(missing)


def test_cel_rules_registry_has_no_stale_entries(crds):
    present = {r for g, k, v in CEL_KINDS for _, r in schema_rules(crds[(g, k)][v]["schema"]["openAPIV3Schema"])}
    assert set(CEL_RULES) == present


def test_every_shipped_istio_kind_has_its_cel_rules_covered():
    shipped = {(group_version(d)[0], d["kind"], group_version(d)[1]) for _, _, d in ISTIO_RESOURCES}
    assert shipped <= set(CEL_KINDS), f"add these kinds to CEL_KINDS: {sorted(shipped - set(CEL_KINDS))}"


def _wasmplugin(**spec_changes):
    doc = copy.deepcopy(load_yaml_docs(ISTIO / "wasmplugin.yaml")[0])
    for k, v in spec_changes.items():
        if v is None:
            doc["spec"].pop(k, None)
        else:
            doc["spec"][k] = v
    return doc


@pytest.mark.parametrize("change,expected", [
    ({"failStrategy": "FAIL_CLOSED"}, "is not one of"),
    ({"pluginconfig": {}}, "Additional properties are not allowed"),
    ({"priority": "10"}, "is not of type"),
    ({"url": None}, "'url' is a required property"),
    ({"url": "ftp://registry.example.com/oidc-filter"}, "url must have schema one of"),
    ({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]},
     "only one of targetRefs or selector can be set"),
    ({"vmConfig": {"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}},
     "value may only be set when valueFrom is INLINE"),
    ({"vmConfig": {"env": [{"name": "A", "valueFrom": "HOST"}, {"name": "A", "valueFrom": "HOST"}]}},
     "duplicate entry"),
    ({"selector": {"matchLabels": {"istio": "ingress*"}}}, "wildcard not allowed in label value match"),
    ({"sha256": "ABC"}, "does not match"),
])
def test_validator_rejects_broken_wasmplugin(crds, change, expected):
    errs = validate_istio_resource(crds, _wasmplugin(**change))
    assert any(expected in e for e in errs), errs


def test_validator_rejects_broken_serviceentry_and_destinationrule(crds):
    se, dr = load_yaml_docs(ISTIO / "serviceentry.yaml")
    bad = copy.deepcopy(se)
    bad["spec"]["ports"].append({"number": 443, "name": "https2", "protocol": "HTTPS"})
    assert any("port number cannot be duplicated" in e for e in validate_istio_resource(crds, bad))
    bad = copy.deepcopy(se)
    bad["spec"]["hosts"] = ["*"]
    assert any("hostname cannot be wildcard" in e for e in validate_istio_resource(crds, bad))
    bad = copy.deepcopy(dr)
    bad["spec"]["trafficPolicy"]["connectionPool"] = {"tcp": {"connectTimeout": "500us"}}
    assert any("greater than 1ms" in e for e in validate_istio_resource(crds, bad))
    bad = copy.deepcopy(dr)
    bad["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mode"] = "SIMPLE_TLS"
    assert validate_istio_resource(crds, bad)


@pytest.mark.parametrize("url,ok", [
    ("oci://registry.example.com/oidc-filter@sha256:" + "0" * 64, True),
    ("registry.example.com/oidc-filter:0.1.0", True),
    ("https://example.com/plugin.wasm", True),
    ("file:///opt/filters/plugin.wasm", True),
    ("ftp://example.com/plugin.wasm", False),
    ("s3://bucket/plugin.wasm", False),
    ("ftp:plugin.wasm", False),
])
def test_url_rule(url, ok):
    assert bool(_url_rule(url)) is ok


@pytest.mark.parametrize("text,seconds", [("1ms", 0.001), ("1.5s", 1.5), ("1h30m", 5400), ("0", 0), ("300us", 0.0003)])
def test_cel_duration(text, seconds):
    assert cel_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1d", "1.s5"])
def test_cel_duration_rejects(text):
    with pytest.raises(ValueError):
        cel_duration(text)


# ======================================================================================
# Tests: the manifests agree with each other

MANIFEST_SETS = {
    "istio": sorted(p for p in YAML_FILES if p.parent == ISTIO),
    "examples/prometheus": sorted(p for p in YAML_FILES if ISTIO / "examples" / "prometheus" in p.parents),
}


def set_docs(name):
    return [(p, d) for p in MANIFEST_SETS[name] for d in load_yaml_docs(p)]


def of_kind(docs, kind, patches=None):
    return [d for p, d in docs if d.get("kind") == kind and (patches is None or is_patch_file(p) == patches)]


def ns(doc):
    return doc["metadata"].get("namespace", "default")


CLUSTER_RE = re.compile(r"^outbound\|(?P<port>[0-9]+)\|(?P<subset>[^|]*)\|(?P<host>[^|]+)$")


def visible_to(doc, namespace):
    export = doc["spec"].get("exportTo", ["*"])
    return "*" in export or namespace in export or ("." in export and ns(doc) == namespace)


@pytest.mark.parametrize("name", sorted(MANIFEST_SETS))
def test_manifest_set_is_coherent(name):
    docs = set_docs(name)
    assert docs, f"{name}: no manifests"
    # unique (kind, namespace, name) among resources to apply
    ids = [(d["kind"], ns(d), d["metadata"]["name"]) for p, d in docs if not is_patch_file(p)]
    assert len(ids) == len(set(ids)), f"{name}: duplicate resources {ids}"

    plugins = of_kind(docs, "WasmPlugin")
    assert len(plugins) == 1, f"{name}: expected one WasmPlugin"
    wp = plugins[0]
    spec, cfg = wp["spec"], wp["spec"]["pluginConfig"]

    # the image: pinned by digest, pulled once, fail closed, before Istio's authn
    assert re.fullmatch(r"oci://[^@\s]+@sha256:[0-9a-f]{64}", spec["url"]), spec["url"]
    assert spec.get("imagePullPolicy") in ("IfNotPresent", "Always")
    assert spec.get("failStrategy") == "FAIL_CLOSE"
    assert spec.get("phase") == "AUTHN"
    assert spec.get("type", "HTTP") == "HTTP"
    labels = spec["selector"]["matchLabels"]
    assert labels, "the WasmPlugin must select the gateway pods"

    # secrets: never inline; *_env names come from the host env
    assert "client_secret" not in cfg and "cookie_secret" not in cfg, "secrets must not be inline"
    env_names = {cfg["client_secret_env"], cfg["cookie_secret_env"]}
    host_env = {e["name"] for e in spec["vmConfig"]["env"] if e.get("valueFrom") == "HOST"}
    assert env_names <= host_env, f"pluginConfig *_env {env_names} must be vmConfig.env entries with valueFrom: HOST"

    # ... which the gateway's istio-proxy container gets from a Secret
    patches = of_kind(docs, "Deployment", patches=True)
    assert len(patches) == 1, f"{name}: expected one gateway Deployment patch"
    patch = patches[0]
    assert ns(patch) == ns(wp), "the env patch must target the gateway in the WasmPlugin's namespace"
    containers = {c["name"]: c for c in patch["spec"]["template"]["spec"]["containers"]}
    assert "istio-proxy" in containers
    patch_env = {e["name"]: e for e in containers["istio-proxy"]["env"]}
    refs = set()
    for env in sorted(host_env):
        assert env in patch_env, f"{env} missing from the istio-proxy env in the patch"
        ref = patch_env[env]["valueFrom"]["secretKeyRef"]
        refs.add((ref["name"], ref["key"]))
    for secret in of_kind(docs, "Secret"):
        assert ns(secret) == ns(patch), "the Secret must be in the gateway's namespace"
        keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
        for sname, key in refs:
            if sname == secret["metadata"]["name"]:
                assert key in keys, f"Secret {sname} has no key {key}"
    if of_kind(docs, "Secret"):
        assert {s for s, _ in refs} <= {s["metadata"]["name"] for s in of_kind(docs, "Secret")}

    # every cluster the filter calls exists: ServiceEntry host+port, TLS origination with SNI
    clusters = [cfg["idp_cluster"], *(cfg.get("idp_clusters") or {}).values()]
    issuer_host = urlsplit(cfg["oidc_issuer_url"]).hostname
    assert CLUSTER_RE.match(cfg["idp_cluster"]).group("host") == (cfg.get("idp_authority") or issuer_host).split(":")[0]
    for cluster in clusters:
        m = CLUSTER_RE.match(cluster)
        assert m, f"{cluster!r} is not an Istio outbound cluster name outbound|<port>||<host>"
        host, port = m.group("host"), int(m.group("port"))
        ses = [s for s in of_kind(docs, "ServiceEntry") if host in s["spec"]["hosts"] and visible_to(s, ns(wp))]
        assert ses, f"no ServiceEntry for {host} visible in {ns(wp)}"
        assert any(p["number"] == port for s in ses for p in s["spec"]["ports"]), f"no port {port} for {host}"
        drs = [d for d in of_kind(docs, "DestinationRule") if d["spec"]["host"] == host and visible_to(d, ns(wp))]
        assert drs, f"no DestinationRule for {host}"
        tp = drs[0]["spec"]["trafficPolicy"]
        tls = next((pl["tls"] for pl in tp.get("portLevelSettings", []) if pl["port"]["number"] == port), tp.get("tls"))
        assert tls and tls["mode"] == "SIMPLE", f"{host}:{port} needs TLS origination (mode SIMPLE)"
        assert tls.get("sni") == host
        assert host in (tls.get("subjectAltNames") or []), f"{host}:{port}: the certificate name is not checked"

    # the example: Gateway on the same pods, VirtualService bound to it for the same hosts
    for gw in of_kind(docs, "Gateway"):
        assert gw["spec"]["selector"] == labels, "Gateway and WasmPlugin must select the same pods"
        gw_hosts = {h.split("/")[-1] for s in gw["spec"]["servers"] for h in s["hosts"]}
        bound = [vs for vs in of_kind(docs, "VirtualService")
                 if f"{ns(gw)}/{gw['metadata']['name']}" in vs["spec"].get("gateways", [])
                 or (ns(vs) == ns(gw) and gw["metadata"]["name"] in vs["spec"].get("gateways", []))]
        assert bound, f"no VirtualService bound to Gateway {gw['metadata']['name']}"
        for vs in bound:
            assert set(vs["spec"]["hosts"]) <= gw_hosts
        for server in gw["spec"]["servers"]:
            assert server["port"]["protocol"] == "HTTPS", "protected hosts are served over HTTPS only"


def test_placeholder_digest_is_the_same_everywhere():
    urls = {d["spec"]["url"] for _, _, d in WASMPLUGINS}
    assert len({u.split("@")[1] for u in urls}) == 1, urls


# ======================================================================================
# Tests: the filter accepts each pluginConfig (its own validation, via cargo)

def _check_config_cmd(config_file: Path, env: dict) -> list[str]:
    cmd = ["cargo", "run", "-q", "-p", "oidc-filter-cli", "--", "check", str(config_file)]
    for k, v in env.items():
        cmd += ["--env", f"{k}={v}"]
    return cmd


def _plugin_env(doc) -> dict:
    env = {}
    for e in doc["spec"].get("vmConfig", {}).get("env", []):
        env[e["name"]] = DUMMY_SECRET if e.get("valueFrom") == "HOST" else e.get("value", "")
    return env


needs_cargo = pytest.mark.skipif(shutil.which("cargo") is None, reason="cargo is not installed")


@needs_cargo
@pytest.mark.parametrize("res", WASMPLUGINS, ids=res_id)
def test_plugin_config_accepted_by_filter(res, tmp_path):
    _, _, doc = res
    config = tmp_path / "plugin-config.json"
    # Istio hands pluginConfig to the filter as JSON text (a protobuf Struct, marshalled).
    config.write_text(json.dumps(doc["spec"]["pluginConfig"]))
    r = subprocess.run(_check_config_cmd(config, _plugin_env(doc)), cwd=REPO,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"check-config refused {res_id(res)} (exit {r.returncode}):\n{r.stdout}{r.stderr}"


@needs_cargo
def test_check_config_refuses_a_bad_config(tmp_path):
    """The command really validates: a wrong value and an unknown key are reported."""
    _, _, doc = WASMPLUGINS[0]
    cfg = dict(doc["spec"]["pluginConfig"], cookie_samesite="sometimes", no_such_option=True)
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(cfg))
    r = subprocess.run(_check_config_cmd(config, _plugin_env(doc)), cwd=REPO,
                       capture_output=True, text=True, timeout=1800)
    out = r.stdout + r.stderr
    assert r.returncode == 1, f"exit {r.returncode}:\n{out}"
    assert re.search(r"^\S+: oidc-filter: config: cookie_samesite: ", out, re.M), out
    assert re.search(r"^\S+: oidc-filter: config: .*no_such_option", out, re.M), out


# ======================================================================================
# Tests: the image

WASM = b"\0asm\x01\0\0\0" + bytes(range(256)) * 64  # a fake module: magic, version, bytes


def build_image(tmp_path: Path, wasm: bytes = WASM, name="img", *extra) -> tuple[str, Path, subprocess.CompletedProcess]:
    src = tmp_path / f"{name}.wasm"
    src.write_bytes(wasm)
    out = tmp_path / name
    r = subprocess.run([sys.executable, str(BUILD_IMAGE), "--wasm", str(src), "--out", str(out), *extra],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), out, r


def read_blob(layout: Path, desc: dict) -> bytes:
    algo, hexd = desc["digest"].split(":")
    data = (layout / "blobs" / algo / hexd).read_bytes()
    assert algo == "sha256" and hashlib.sha256(data).hexdigest() == hexd, f"digest mismatch {desc['digest']}"
    assert len(data) == desc["size"], f"size mismatch for {desc['digest']}"
    return data


def istio_extract(layout: Path, manifest: dict) -> bytes:
    """What Istio's image fetcher (pkg/wasm/imagefetcher.go) does with a non-Docker manifest:
    take the last layer, require the OCI gzip'd tar media type, gunzip, return the file whose
    base name is plugin.wasm."""
    layer_desc = manifest["layers"][-1]
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(read_blob(layout, layer_desc)))) as tar:
        for m in tar.getmembers():
            if os.path.basename(m.name) == "plugin.wasm":
                return tar.extractfile(m).read()
    raise AssertionError("plugin.wasm not in the layer")


def test_image_is_a_valid_oci_layout(tmp_path):
    digest, layout, r = build_image(tmp_path)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), r.stdout
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [mdesc] = index["manifests"]
    assert mdesc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert mdesc["digest"] == digest, "printed digest must be the manifest's"
    assert mdesc["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    manifest = json.loads(read_blob(layout, mdesc))
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["annotations"]["module.wasm.image/variant"] == "compat"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert len(manifest["layers"]) == 1, "the compat variant has exactly one layer"
    config = json.loads(read_blob(layout, manifest["config"]))
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    layer = read_blob(layout, manifest["layers"][0])
    tar_bytes = gzip.decompress(layer)
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        [m] = tar.getmembers()
        assert (m.name, m.isfile(), m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == \
            ("plugin.wasm", True, 0, 0, 0, "", "", 0o644)
        assert tar.extractfile(m).read() == WASM
    assert istio_extract(layout, manifest) == WASM
    # no stray files: exactly the three blobs
    blobs = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
    assert blobs == sorted(d["digest"].split(":")[1] for d in (mdesc, manifest["config"], manifest["layers"][0]))
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]


def test_image_tarball_holds_the_layout(tmp_path):
    _, layout, _ = build_image(tmp_path)
    tarball = layout.with_name(layout.name + ".tar")
    with tarfile.open(tarball) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in tar.getmembers())
    on_disk = {str(p.relative_to(layout)): p.read_bytes() for p in layout.rglob("*") if p.is_file()}
    assert files == on_disk


def test_image_is_reproducible(tmp_path):
    d1, l1, _ = build_image(tmp_path, WASM, "a")
    d2, l2, _ = build_image(tmp_path, WASM, "b")
    assert d1 == d2
    assert l1.with_name("a.tar").read_bytes() == l2.with_name("b.tar").read_bytes()
    # rebuilding over an existing output gives the same result and leaves no stale blobs
    d3, l3, _ = build_image(tmp_path, WASM + b"\0", "a")
    assert d3 != d1
    d4, _, _ = build_image(tmp_path, WASM, "a")
    assert d4 == d1
    assert len(list((l1 / "blobs" / "sha256").iterdir())) == 3


def test_image_digest_independent_of_tag_and_stable_with_stored_gzip(tmp_path):
    d1, _, _ = build_image(tmp_path, WASM, "a", "--tag", "0.1.0")
    d2, _, _ = build_image(tmp_path, WASM, "b")
    assert d1 == d2
    s1, layout, _ = build_image(tmp_path, WASM, "c", "--gzip-level", "0")
    s2, _, _ = build_image(tmp_path, WASM, "d", "--gzip-level", "0")
    assert s1 == s2
    manifest = json.loads(read_blob(layout, json.loads((layout / "index.json").read_text())["manifests"][0]))
    assert istio_extract(layout, manifest) == WASM


def test_image_prints_pinned_url(tmp_path):
    digest, _, r = build_image(tmp_path, WASM, "a", "--repository", "registry.example.com/oidc-filter")
    assert f"oci://registry.example.com/oidc-filter@{digest}" in r.stderr
    assert r.stdout.strip() == digest


@pytest.mark.parametrize("content,message", [
    (b"#!/bin/sh\n", "not a WebAssembly core module"),
    (b"\0asm\x0d\0\x01\0", "not a WebAssembly core module"),  # a component, not a core module
    (None, "no such file"),
])
def test_image_refuses_bad_input(tmp_path, content, message):
    src = tmp_path / "in.wasm"
    if content is not None:
        src.write_bytes(content)
    r = subprocess.run([sys.executable, str(BUILD_IMAGE), "--wasm", str(src), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and message in r.stderr and r.stdout == ""
    assert not (tmp_path / "o").exists()


def test_image_refuses_to_overwrite_a_foreign_directory(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    src = tmp_path / "in.wasm"
    src.write_bytes(WASM)
    r = subprocess.run([sys.executable, str(BUILD_IMAGE), "--wasm", str(src), "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "refusing" in r.stderr
    assert (out / "precious.txt").read_text() == "keep me"


def test_build_image_uses_only_the_standard_library():
    tree = ast.parse(BUILD_IMAGE.read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods - {"__future__"} <= set(sys.stdlib_module_names), mods - set(sys.stdlib_module_names)


def test_dockerfile_builds_the_same_single_layer_image():
    lines = [ln.strip() for ln in (ISTIO / "image" / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines == ["FROM scratch", "COPY oidc_filter.wasm /plugin.wasm"]


# ======================================================================================
# Tests: the docs cover what they claim

def test_migration_guide_covers_the_seed(shared_dir):
    seed = "\n".join(p.read_text(encoding="utf-8") for p in sorted(SEED_DIR.glob("*.txt")))
    variables = set(re.findall(r"OAUTH2_PROXY_[A-Z_]+[A-Z]", seed))
    annotations = set(re.findall(r"nginx\.ingress\.kubernetes\.io/[a-z-]+[a-z]", seed))
    assert variables and annotations, "seed article not found or changed"
    guide = (ISTIO / "MIGRATING.md").read_text(encoding="utf-8")
    missing = sorted(x for x in variables | annotations if f"`{x}" not in guide)
    assert not missing, f"MIGRATING.md does not map: {missing}"
    for gone in ("Deployment", "Service", "Ingress", "hop"):
        assert gone in guide


def test_istio_readme_section():
    readme = (ISTIO.parent / "README.md").read_text(encoding="utf-8")
    assert "\n## Istio\n" in readme
    text = readme.split("\n## Istio\n", 1)[1].split("\n## ", 1)[0]
    for needle in ("build-image.py", "outbound|<port>||<host>", "outbound|443||", "gateway-env-patch.yaml",
                   "serviceentry.yaml", "valueFrom: HOST", "istio/image/Dockerfile", "sha256"):
        assert needle in text, needle


def test_example_readme_lists_every_file():
    d = ISTIO / "examples" / "prometheus"
    text = (d / "README.md").read_text(encoding="utf-8")
    for p in MANIFEST_SETS["examples/prometheus"]:
        assert f"({p.relative_to(d)})" in text, p.name


def test_every_tls_destinationrule_checks_the_certificate_name():
    drs = [(rel(p), d) for p in YAML_FILES for d in load_yaml_docs(p)
           if d and d.get("kind") == "DestinationRule"]
    assert drs, "no DestinationRule shipped"
    for path, dr in drs:
        assert tls_name_errors(dr) == [], path


@pytest.mark.parametrize("tls, ok", [
    ({"mode": "SIMPLE", "sni": "idp.example.com"}, False),
    ({"mode": "MUTUAL", "sni": "idp.example.com", "subjectAltNames": []}, False),
    ({"mode": "SIMPLE", "sni": "idp.example.com", "subjectAltNames": ["idp.example.com"]}, True),
    ({"mode": "DISABLE"}, True),
])
def test_tls_without_subject_alt_names_is_refused(tls, ok):
    top = {"metadata": {"name": "dr"}, "spec": {"host": "idp.example.com", "trafficPolicy": {"tls": tls}}}
    per_port = {"metadata": {"name": "dr"}, "spec": {"host": "idp.example.com", "trafficPolicy": {
        "portLevelSettings": [{"port": {"number": 443}, "tls": tls}]}}}
    for dr in (top, per_port):
        assert (tls_name_errors(dr) == []) == ok, (dr, tls_name_errors(dr))
