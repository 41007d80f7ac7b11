//! The kernel program's events (aya-log, `--kernel-log`): a thread that forwards them to the
//! log, under their own target, while the dataplane lives.

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use aya::Ebpf;

/// The thread that forwards the kernel program's events to the log while the dataplane lives.
pub(super) struct KernelLog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the event reader checks whether the dataplane went away.
const KERNEL_LOG_POLL_MS: i32 = 200;

impl KernelLog {
    pub(super) fn start(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut logger = aya_log::EbpfLogger::init_with_logger(ebpf, &KernelTarget)
            .context("the kernel program's event ring (AYA_LOGS)")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("kernel-log".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    let mut fds = [libc::pollfd {
                        fd: logger.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    match crate::sys::poll(&mut fds, KERNEL_LOG_POLL_MS) {
                        Ok(0) => {}
                        Ok(_) => logger.flush(),
                        // Not for a busy loop: wait as long as a quiet poll would.
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(
                            KERNEL_LOG_POLL_MS.unsigned_abs().into(),
                        )),
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Logs the kernel's events under their own target, so that an operator can tell them from
/// the daemon's (and filter them: `RUST_LOG=mediaproxy::kernel=debug`).
struct KernelTarget;

impl log::Log for KernelTarget {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        log::logger().log(
            &log::Record::builder()
                .args(*record.args())
                .level(record.level())
                .target("mediaproxy::kernel")
                .build(),
        );
    }

    fn flush(&self) {
        log::logger().flush();
    }
}
