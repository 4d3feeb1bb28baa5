#!/usr/bin/env python3
"""Package phi_guard.wasm as an OCI image Istio's WasmPlugin can pull (`make oci`).

    build_oci.py --wasm target/wasm32-wasip1/release/phi_guard.wasm --out target/oci
                 [--tag phi-guard/wasm-plugin:0.1.0]

Istio accepts two image shapes; this is the "compat" one, a plain container image: one layer,
media type application/vnd.oci.image.layer.v1.tar+gzip, holding `plugin.wasm` at its root. No
registry or Docker daemon is needed. Writes, under --out:

  phi-guard-wasm/        an OCI image layout (oci-layout, index.json, blobs/sha256/...)
  phi-guard-wasm.tar     the same directory as one tarball: an `oci-archive` for skopeo, and,
                         thanks to the docker-archive manifest.json beside index.json, a tarball
                         `docker load -i` accepts

The build is reproducible: fixed file metadata, gzip without a timestamp, and the image's
`created` time from SOURCE_DATE_EPOCH (default 0). The same wasm gives the same digests.

Push it, e.g.:  skopeo copy oci-archive:target/oci/phi-guard-wasm.tar \\
                    docker://registry.example.com/phi-guard/wasm-plugin:0.1.0
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUT_NAME = "phi-guard-wasm"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
PLUGIN_FILE = "plugin.wasm"


def crate_version() -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "Cargo.toml").read_text(), re.MULTILINE)
    return m.group(1) if m else "0.0.0"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(wasm: bytes, mtime: int) -> bytes:
    """An uncompressed tar with the single regular file plugin.wasm (root-owned, 0644)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(PLUGIN_FILE)
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def canonical(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def build(wasm_path: Path, out: Path, tag: str) -> dict:
    """Write the layout and the tarball; return their digests and paths."""
    wasm = wasm_path.read_bytes()
    if wasm[:4] != b"\0asm":
        raise SystemExit(f"{wasm_path} is not a WebAssembly module")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    tar = layer_tar(wasm, epoch)
    layer = gzip.compress(tar, compresslevel=9, mtime=0)
    version = tag.rpartition(":")[2] if ":" in tag.rpartition("/")[2] else crate_version()
    labels = {
        "org.opencontainers.image.title": "phi-guard",
        "org.opencontainers.image.description":
            "phi-guard proxy-wasm filter (plugin.wasm) for Envoy and Istio WasmPlugin",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    config = canonical({
        # What `docker build` FROM scratch would record; Istio ignores the platform.
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
        "history": [{"created": created, "created_by": "scripts/build_oci.py: plugin.wasm"}],
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": sha256(layer), "size": len(layer)}],
        "annotations": {"org.opencontainers.image.title": "phi-guard",
                        "org.opencontainers.image.version": version},
    })
    index = canonical({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{"mediaType": MANIFEST_MEDIA_TYPE, "digest": sha256(manifest),
                       "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": version,
                                       "io.containerd.image.name": tag}}],
    })
    blob_path = {d: f"blobs/sha256/{d.split(':')[1]}"
                 for d in (sha256(layer), sha256(config), sha256(manifest))}
    docker_manifest = canonical([{"Config": blob_path[sha256(config)], "RepoTags": [tag],
                                  "Layers": [blob_path[sha256(layer)]]}])
    files = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        "manifest.json": docker_manifest,
        blob_path[sha256(layer)]: layer,
        blob_path[sha256(config)]: config,
        blob_path[sha256(manifest)]: manifest,
    }

    layout = out / LAYOUT_NAME
    shutil.rmtree(layout, ignore_errors=True)
    for rel, data in files.items():
        path = layout / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    archive = out / f"{LAYOUT_NAME}.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar_out:
        dirs = sorted({str(Path(rel).parent) for rel in files if "/" in rel} | {"blobs"})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar_out.addfile(info)
        for rel in sorted(files):
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(files[rel]), 0o644, epoch
            tar_out.addfile(info, io.BytesIO(files[rel]))
    return {"layout": str(layout), "archive": str(archive), "tag": tag,
            "manifest": sha256(manifest), "layer": sha256(layer), "wasm": sha256(wasm)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wasm", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tag", default=f"phi-guard/wasm-plugin:{crate_version()}")
    args = ap.parse_args(argv)
    if not args.wasm.exists():
        raise SystemExit(f"{args.wasm} not found: run `make wasm`")
    args.out.mkdir(parents=True, exist_ok=True)
    result = build(args.wasm, args.out, args.tag)
    print(f"""OCI image {result['tag']} (Istio "compat" shape: one tar+gzip layer with plugin.wasm)
  layout    {result['layout']}/
  archive   {result['archive']}
  manifest  {result['manifest']}
  plugin    {result['wasm']}  (sha256 of plugin.wasm)
Push:  skopeo copy oci-archive:{result['archive']} docker://REGISTRY/phi-guard/wasm-plugin:TAG
  or:  docker load -i {result['archive']} && docker tag {result['tag']} REGISTRY/... && docker push ...""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
