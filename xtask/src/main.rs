//! Developer tasks: `cargo xtask setup | demo | test | bench | fuzz`.
//!
//! Every task but `fuzz` starts with `setup`, which installs what a fresh Debian 12 machine
//! lacks and does nothing on a machine that has it all.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: Debian packages, the rustup link to Debian's rustc,
    /// bpf-linker built against the same LLVM.
    Setup,
    /// Build in release mode and run the demo.
    Demo {
        /// Passed to `mediaproxy demo`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the whole test suite: unit, `BPF_PROG_TEST_RUN` fixtures, end to end, real clients,
    /// fuzz smoke runs and the quick benchmark.
    Test {
        /// Only tests whose name contains this (passed to cargo test).
        filter: Option<String>,
    },
    /// Run the packet-rate benchmark (release build).
    Bench {
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the fuzz targets (cargo-fuzz, nightly) for a while each.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

/// Debian packages, beyond those that `rustc -vV` decides (llvm-N-dev).
const PACKAGES: &[&str] = &[
    // Building the eBPF program (see README, "Building").
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    // Running it and its tests.
    "iproute2",
    "ethtool",
    "nftables",
    "procps",
    "tcpdump",
    // The real clients the tests drive, and the reference relay.
    "rtpengine-utils",
    "rtpengine-daemon",
    "kamailio",
    // Profiling the benchmark.
    "linux-perf",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Seconds per fuzz target in the test suite.
const FUZZ_SMOKE_SECONDS: u64 = 15;
const TOOLCHAIN_LINK: &str = "deb-rustc";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt_install(pkgs: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&String> = pkgs.iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "setup: installing {}",
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing.iter().map(|s| s.as_str()))
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn llvm_major() -> anyhow::Result<String> {
    let v = output(Command::new("/usr/bin/rustc").arg("-vV"))
        .context("Debian's /usr/bin/rustc is missing")?;
    let line = v
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("no LLVM version in rustc -vV")?;
    Ok(line.split('.').next().unwrap_or_default().to_owned())
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map_or_else(
            || {
                PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                    .join(".cargo")
            },
            PathBuf::from,
        )
        .join("bin")
}

fn setup() -> anyhow::Result<()> {
    let t = Instant::now();
    // SAFETY: no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("setup installs packages and the tests load XDP programs: run as root");
    }
    apt_install(&PACKAGES.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    let major = llvm_major()?;
    apt_install(&[format!("llvm-{major}-dev")])?;

    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with(TOOLCHAIN_LINK)) {
        println!("setup: rustup toolchain link {TOOLCHAIN_LINK} /usr");
        run(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN_LINK, "/usr"]))?;
    }

    if output(Command::new(cargo_bin_dir().join("cargo-fuzz")).arg("--version")).is_none() {
        println!("setup: installing cargo-fuzz");
        run(Command::new("cargo").args(["+stable", "install", "cargo-fuzz", "--locked"]))?;
    }

    let linker = cargo_bin_dir().join("bpf-linker");
    let have = output(Command::new(&linker).arg("--version")).unwrap_or_default();
    if !have.contains(BPF_LINKER_VERSION) {
        println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major}");
        let path = format!(
            "/usr/lib/llvm-{major}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "+stable",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("PATH", path))?;
    }
    println!("setup: ready ({:.0} s)", t.elapsed().as_secs_f64());
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root());
    c
}

/// The relay and the lab beside it: `mediaproxy demo|bench` run `mediaproxy-lab`.
fn build_release() -> anyhow::Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "proxy-userspace",
        "-p",
        "mediaproxy-lab",
        "--bins",
    ]))?;
    Ok(root().join("target/release/mediaproxy"))
}

fn test(filter: Option<&str>) -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let t = Instant::now();
    // The house rules first: formatted, and the workspace's pedantic lints with every
    // exception an `#[expect(lint, reason)]` where it happens.
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["build", "--workspace", "--bins", "--tests"]))?;
    let bin = root().join("target/debug/mediaproxy");
    // Host unit tests, the BPF_PROG_TEST_RUN fixtures, the end-to-end and client tests.
    let mut c = cargo();
    c.args(["test", "--workspace"]).env("MEDIAPROXY_BIN", &bin);
    if let Some(f) = filter {
        c.arg(f);
    }
    run(&mut c)?;
    if filter.is_none() {
        // Seven targets: a short smoke run each in CI (0 crashes), longer by `cargo xtask fuzz`.
        fuzz(FUZZ_SMOKE_SECONDS)?;
        // The benchmark is a product feature: its quick profile must produce every figure.
        let release = build_release()?;
        let out = root().join("target/bench-smoke");
        run(Command::new(&release)
            .args(["bench", "--quick", "--json"])
            .arg(out.join("bench.json"))
            .arg("--svg")
            .arg(out.join("bench.svg")))?;
        run(Command::new(&release)
            .args(["bench", "--check"])
            .arg(out.join("bench.json")))?;
    }
    println!(
        "test: all passed in {:.0} s{}",
        t.elapsed().as_secs_f64(),
        if ci { " (CI)" } else { "" }
    );
    Ok(())
}

/// Every fuzz target (`fuzz/fuzz_targets`): the ng codec and SDP, the probe codec and
/// verifier, the userspace frame parser, the ng options, and the stateful call model and
/// session engine driven by event sequences.
const FUZZ_TARGETS: [&str; 7] = [
    "bencode", "sdp", "probe", "frame", "flags", "calls", "engine",
];

/// The fuzz targets (fuzz/): cargo-fuzz with libFuzzer and `AddressSanitizer`, on nightly.
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    for target in FUZZ_TARGETS {
        let corpus = root().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = root().join("fuzz/seeds").join(target);
        std::fs::create_dir_all(&seeds)?;
        run(cargo()
            .args(["+nightly", "fuzz", "run", "--fuzz-dir", "fuzz", target])
            .arg(&corpus)
            .arg(seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Demo { args } => {
            setup()?;
            let bin = build_release()?;
            run(Command::new(bin).arg("demo").args(args))
        }
        Task::Test { filter } => {
            setup()?;
            test(filter.as_deref())
        }
        Task::Bench { args } => {
            setup()?;
            let bin = build_release()?;
            run(Command::new(bin).arg("bench").args(args))
        }
        Task::Fuzz { seconds } => {
            setup()?;
            fuzz(seconds)
        }
    }
}
