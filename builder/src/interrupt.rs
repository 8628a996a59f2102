//! Ctrl-C and SIGTERM: the first one asks the build to stop (running steps are killed,
//! mounts and temporary files cleaned up, the store left consistent); a second one exits
//! at once (the store stays usable: every write is a temp file renamed into place).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Once};

static FLAG: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// The flag the handlers set; the solver's cancel flag.
pub fn flag() -> &'static AtomicBool {
    &FLAG
}

/// Whether an interrupt arrived.
pub fn interrupted() -> bool {
    FLAG.load(Ordering::SeqCst)
}

/// Installs the handlers (once).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // A second signal while the flag is set exits with 130 straight away.
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, FLAG.clone());
            let _ = signal_hook::flag::register(sig, FLAG.clone());
        }
    });
}
