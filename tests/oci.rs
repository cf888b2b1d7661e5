//! `make oci`: the module as an OCI image layout that Istio and Envoy Gateway pull, read back by
//! a real OCI tool (skopeo), with the digest that the manifests pin.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::Path;
use std::process::Command;

use support::{repo, scratch_dir, wasm_path};

/// Packs the built module into `out` as `scripts/oci.py` does for `make oci`; the digest printed.
fn pack(out: &Path) -> String {
    let output = Command::new("python3")
        .arg(repo().join("scripts/oci.py"))
        .arg(wasm_path())
        .arg(out)
        .arg("test")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout.lines().next().unwrap().rsplit(' ').next().unwrap().to_string()
}

fn skopeo(args: &[&str]) -> String {
    let output = Command::new("skopeo").args(args).output().expect("skopeo (make setup installs it)");
    assert!(output.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_image_holds_the_module_as_plugin_wasm_under_the_digest_printed() {
    let dir = scratch_dir();
    let layout = dir.join("oci");
    let digest = pack(&layout);
    let image = format!("oci:{}:test", layout.display());
    let inspected: serde_json::Value = serde_json::from_str(&skopeo(&["inspect", &image])).unwrap();
    assert_eq!(inspected["Digest"].as_str(), Some(digest.as_str()));
    // Copied out by skopeo, the one layer is a tar of plugin.wasm: the module, byte for byte.
    let copied = dir.join("copied");
    skopeo(&["copy", &image, &format!("dir:{}", copied.display())]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copied.join("manifest.json")).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let blob = layers[0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let listed = Command::new("tar").arg("-tzf").arg(copied.join(blob)).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "plugin.wasm\n", "one file, plugin.wasm");
    let status = Command::new("tar").arg("-xzf").arg(copied.join(blob)).arg("-C").arg(&unpacked).status();
    assert!(status.unwrap().success());
    let module = std::fs::read(unpacked.join("plugin.wasm")).unwrap();
    assert!(module == std::fs::read(wasm_path()).unwrap(), "the layer's plugin.wasm is not the module");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_same_module_packs_to_the_same_digest() {
    let (first, second) = (scratch_dir(), scratch_dir());
    assert_eq!(pack(&first.join("oci")), pack(&second.join("oci")));
    let _ = std::fs::remove_dir_all(first);
    let _ = std::fs::remove_dir_all(second);
}
