#!/usr/bin/env python3
"""Packs wsgate.wasm as an OCI image layout that Istio's WasmPlugin (`url: oci://...`) and
Envoy Gateway (`code.type: Image`) pull: one layer holding `plugin.wasm`, the image format both
read (Istio's "Wasm image specification", compat variant). Deterministic: the same module gives
the same digest. Prints the manifest digest, the value of WasmPlugin's `sha256`.

    scripts/oci.py MODULE.wasm OUT_DIR TAG

Push it with `skopeo copy --preserve-digests oci:OUT_DIR:TAG docker://REGISTRY/wsgate:TAG`.
"""

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def blob(out, data):
    """Writes `data` as a blob; returns its descriptor fields."""
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def layer(module):
    """A tar of `plugin.wasm` with fixed metadata, and its gzip, both reproducible."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(module), 0o444, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(module))
    raw = tar_bytes.getvalue()
    return raw, gzip.compress(raw, mtime=0)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    module_path, out, tag = sys.argv[1:]
    with open(module_path, "rb") as f:
        module = f.read()
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    raw, compressed = layer(module)
    config = {
        "architecture": "wasm",
        "os": "wasip1",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "config": {},
    }
    config_descriptor = blob(out, json.dumps(config, sort_keys=True).encode())
    layer_descriptor = blob(out, compressed)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_descriptor},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                **layer_descriptor,
                "annotations": {"org.opencontainers.image.title": "plugin.wasm"},
            }
        ],
        "annotations": {"org.opencontainers.image.title": "wsgate"},
    }
    manifest_descriptor = blob(out, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_descriptor,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    digest = manifest_descriptor["digest"]
    print(f"{out} (oci:{out}:{tag}): {digest}")
    print(f"sha256 for WasmPlugin and EnvoyExtensionPolicy: \"{digest.removeprefix('sha256:')}\"")


if __name__ == "__main__":
    main()
