//! Builds the XDP program (`proxy-ebpf`) for bpfel-unknown-none and leaves it in `OUT_DIR`,
//! where `dataplane.rs` embeds it.
//!
//! The eBPF crate is built with Debian's rustc-web, linked into rustup as `deb-rustc` by
//! `cargo xtask setup`: it ships a prebuilt `core` for the BPF target, which rustup's
//! toolchains here lack (see README, "Building").
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
        .find(|p| p.name.as_str() == "proxy-ebpf")
        .ok_or_else(|| anyhow!("proxy-ebpf package not found"))?;
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
    .context("building the XDP program (run `cargo xtask setup` if the toolchain is missing)")
}
