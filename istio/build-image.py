#!/usr/bin/env python3
"""Build the oidc-filter Wasm plugin image without docker (Python standard library only).

Output: an OCI image layout directory and a tarball of it (an "oci-archive"):

    OUT/                    (default dist/oidc-filter-image/)
      oci-layout            {"imageLayoutVersion": "1.0.0"}
      index.json            one manifest, tagged via org.opencontainers.image.ref.name
      blobs/sha256/<hex>    the layer, the config and the manifest
    OUT.tar                 (default dist/oidc-filter-image.tar) the same files, as one tar

The image is the "compat" variant of the Wasm image specification, which Istio's
wasm image fetcher (istio/istio pkg/wasm/imagefetcher.go) accepts:
  - exactly one layer, media type application/vnd.oci.image.layer.v1.tar+gzip
    (Istio always gunzips the layer, so the layer must be gzip'd; an uncompressed
    tar layer is rejected), containing one file named `plugin.wasm`;
  - the manifest annotation `module.wasm.image/variant: compat` required by the spec
    for an OCI-media-type layer (Istio itself does not read it; other tools do).
The config says linux/amd64: that is the platform go-containerregistry (used by
Istio) picks by default should the image ever be wrapped in an index.

Reproducible: the same .wasm gives the same manifest digest. The layer tar has one entry
with mtime 0, uid/gid 0, no user/group names, mode 0644; the gzip header has mtime 0 and no
file name; JSON is written with sorted keys and no whitespace; nothing records the build time.
`--gzip-level 0` writes stored (uncompressed) deflate blocks with this script's own encoder,
so the digest does not even depend on the zlib build; levels 1-9 use zlib (the default 9
is reproducible for a given zlib, e.g. the same Python build or distribution).

stdout: one line, the manifest digest (sha256:...), for `DIGEST=$(python3 istio/build-image.py)`.
stderr: what was written, and the oci:// URL to put in the WasmPlugin when --repository is given.

Push with any OCI tool that keeps the manifest as is, e.g.
    skopeo copy --preserve-digests oci:dist/oidc-filter-image:latest docker://REGISTRY/oidc-filter:TAG
    crane push dist/oidc-filter-image REGISTRY/oidc-filter:TAG
    oras cp --from-oci-layout dist/oidc-filter-image:latest REGISTRY/oidc-filter:TAG
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WASM_MAGIC = b"\0asm\x01\0\0\0"  # Wasm binary magic + version 1 (a core module)
PLUGIN_FILE = "plugin.wasm"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

VARIANT_ANNOTATION = "module.wasm.image/variant"
VARIANT = "compat"


class BuildError(Exception):
    pass


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(wasm: bytes) -> bytes:
    """The uncompressed layer: a tar with the single entry plugin.wasm, byte-for-byte fixed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(PLUGIN_FILE)
        info.size = len(wasm)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def _gzip_header() -> bytes:
    # RFC 1952: ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown)
    return b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"


def _deflate_stored(data: bytes) -> bytes:
    """Raw deflate (RFC 1951 §3.2.4) made only of stored blocks: no zlib involved."""
    out = bytearray()
    step = 0xFFFF
    chunks = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
    for n, chunk in enumerate(chunks):
        final = 1 if n == len(chunks) - 1 else 0
        out += bytes([final])  # BFINAL, BTYPE=00, padded to the byte boundary
        out += struct.pack("<HH", len(chunk), len(chunk) ^ 0xFFFF)
        out += chunk
    return bytes(out)


def gzip_bytes(data: bytes, level: int) -> bytes:
    if level == 0:
        body = _deflate_stored(data)
    else:
        comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY)
        body = comp.compress(data) + comp.flush()
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    out = _gzip_header() + body + trailer
    if gzip.decompress(out) != data:  # cheap self-check
        raise BuildError("internal error: gzip round trip failed")
    return out


def descriptor(media_type: str, data: bytes, annotations: dict | None = None) -> dict:
    d = {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}
    if annotations:
        d["annotations"] = annotations
    return d


def build_blobs(wasm: bytes, tag: str, gzip_level: int):
    """Return (blobs {digest: bytes}, index bytes, manifest digest)."""
    tar = layer_tar(wasm)
    layer = gzip_bytes(tar, gzip_level)
    config = canonical_json({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
        "history": [{"created_by": f"COPY oidc_filter.wasm /{PLUGIN_FILE} (istio/build-image.py)"}],
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": descriptor(MT_CONFIG, config),
        "layers": [descriptor(MT_LAYER_GZIP, layer)],
        "annotations": {
            VARIANT_ANNOTATION: VARIANT,
            "org.opencontainers.image.title": "oidc-filter",
        },
    })
    manifest_digest = sha256_digest(manifest)
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [descriptor(MT_MANIFEST, manifest, {
            "org.opencontainers.image.ref.name": tag,
            VARIANT_ANNOTATION: VARIANT,
        })],
    })
    blobs = {sha256_digest(b): b for b in (layer, config, manifest)}
    return blobs, index, manifest_digest


def layout_files(blobs: dict, index: bytes) -> dict:
    """Relative path -> bytes for every file of the OCI layout."""
    files = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
    }
    for digest, data in blobs.items():
        algo, hexd = digest.split(":", 1)
        files[f"blobs/{algo}/{hexd}"] = data
    return files


def archive(files: dict) -> bytes:
    """A deterministic tar of the layout (directories first, then sorted paths)."""
    dirs = sorted({str(Path(p).parent) for p in files if "/" in p} | {"blobs"})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info)
        for path in sorted(files):
            data = files[path]
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _looks_like_our_output(path: Path) -> bool:
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    entries = {p.name for p in path.iterdir()}
    return not entries or "oci-layout" in entries


def write_layout(out: Path, files: dict) -> None:
    if not _looks_like_our_output(out):
        raise BuildError(f"{out} exists and is not an OCI image layout; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        for rel, data in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_wasm(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BuildError(f"{path}: no such file (build it first: make wasm)") from None
    except OSError as e:
        raise BuildError(f"{path}: {e.strerror}") from None
    if not data.startswith(WASM_MAGIC):
        raise BuildError(f"{path}: not a WebAssembly core module (expected the bytes \\0asm\\1\\0\\0\\0)")
    return data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Build the oidc-filter Wasm plugin as an OCI image (layout dir + tarball), no docker.")
    ap.add_argument("--wasm", type=Path, default=REPO / "dist" / "oidc_filter.wasm",
                    help="the filter module (default: dist/oidc_filter.wasm)")
    ap.add_argument("--out", type=Path, default=REPO / "dist" / "oidc-filter-image",
                    help="OCI layout directory to write; the tarball is OUT.tar "
                         "(default: dist/oidc-filter-image)")
    ap.add_argument("--tag", default="latest",
                    help="reference name recorded in index.json (default: latest); "
                         "it does not change the manifest digest")
    ap.add_argument("--gzip-level", type=int, default=9, choices=range(0, 10), metavar="0-9",
                    help="layer compression (default 9, zlib); 0 = stored blocks, "
                         "a digest independent of the zlib build")
    ap.add_argument("--repository", metavar="REGISTRY/REPO",
                    help="also print (to stderr) the pinned oci:// URL for the WasmPlugin")
    args = ap.parse_args(argv)

    try:
        wasm = read_wasm(args.wasm)
        blobs, index, manifest_digest = build_blobs(wasm, args.tag, args.gzip_level)
        files = layout_files(blobs, index)
        out = args.out
        write_layout(out, files)
        tarball = out.with_name(out.name + ".tar")
        tmp_tar = tarball.with_name(tarball.name + ".tmp")
        tmp_tar.write_bytes(archive(files))
        os.replace(tmp_tar, tarball)
    except BuildError as e:
        print(f"build-image: {e}", file=sys.stderr)
        return 1

    print(f"build-image: wrote {out}/ and {tarball} "
          f"(wasm {len(wasm)} bytes, gzip level {args.gzip_level}, zlib {zlib.ZLIB_RUNTIME_VERSION})",
          file=sys.stderr)
    if args.repository:
        repo = args.repository.removeprefix("oci://")
        print(f"build-image: WasmPlugin url: oci://{repo}@{manifest_digest}", file=sys.stderr)
    print(manifest_digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
