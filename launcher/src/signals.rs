//! Stop requests: Ctrl-C / SIGTERM to the launcher (through a process-wide
//! handler) or a [`StopHandle`] (for embedding and tests).
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Once};

/// The last SIGINT/SIGTERM/SIGHUP received since the handlers were installed.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: the one thing a signal handler may safely do here.
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that record the signal
/// instead of killing the launcher, so it can stop its workers first. Idempotent.
pub fn install_signal_handlers() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: `on_signal` is async-signal-safe (one atomic store) and
            // lives for the whole program.
            unsafe {
                libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
            }
        }
    });
}

/// The signal received by the installed handlers, if any.
pub(crate) fn received_signal() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Asks a running launch to stop its workers (as SIGTERM to the launcher would).
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// A handle that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests the stop; the launch sends SIGTERM to its workers.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
