//! TLS set-up shared by every HTTP client of the binary.

use std::sync::Once;

/// Installs rustls' `ring` crypto provider once per process (it builds faster than the
/// default aws-lc and is all kiln needs).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
