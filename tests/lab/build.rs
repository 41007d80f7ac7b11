//! Builds the benchmark's XDP programs (`mediaproxy-lab-ebpf`) for bpfel-unknown-none and
//! leaves them in `OUT_DIR`, where `bench/harness.rs` embeds them. The same toolchain route as
//! `proxy-userspace/build.rs` (README, "Building").
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=MEDIAPROXY_EBPF_TOOLCHAIN");
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return Ok(());
    }
    let toolchain =
        std::env::var("MEDIAPROXY_EBPF_TOOLCHAIN").unwrap_or_else(|_| "deb-rustc".to_owned());
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "mediaproxy-lab-ebpf")
        .ok_or_else(|| anyhow!("mediaproxy-lab-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the benchmark's XDP programs (run `cargo xtask setup` if the toolchain is missing)")
}
