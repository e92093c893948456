//! Test helpers shared by the hush crates. Not published, not part of the SDK.
//!
//! # System components
//!
//! Some tests need a component that `cargo` cannot provide: libsrtp, coturn, network namespaces,
//! iptables. CI (`.ci/run`) installs them and sets [`REQUIRE_ENV`]; there a missing component is a
//! test failure. In a plain `cargo test` without the component, the test reports that it did not
//! run on the terminal (bypassing libtest's output capture) and returns.
//!
//! ```
//! # fn coturn_present() -> bool { true }
//! fn relay_call_over_coturn() {
//!     if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
//!         return;
//!     }
//!     // ... the real test ...
//! }
//! # relay_call_over_coturn();
//! ```

use std::io::Write;

pub mod coturn;
pub mod servers;

/// Environment variable that turns a missing system component into a test failure.
pub const REQUIRE_ENV: &str = "HUSH_REQUIRE_SYSTEM_TESTS";

/// Whether CI asked for every system-component test to run.
pub fn system_tests_required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Decides whether a test that needs `component` can run.
///
/// Returns `true` when `available`. Otherwise panics if [`REQUIRE_ENV`] is set, or writes a
/// `NOT RUN` line straight to the process's stderr (visible even under `cargo test`'s capture)
/// and returns `false`, so the caller returns early.
#[track_caller]
pub fn system_component(component: &str, available: bool) -> bool {
    if available {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    if system_tests_required() {
        panic!("{test}: required system component missing: {component} ({REQUIRE_ENV} is set)");
    }
    // `eprintln!` is captured by libtest; writing to the raw handle is not.
    let _ = writeln!(
        std::io::stderr().lock(),
        "NOT RUN {test}: needs {component}, which is missing here (CI sets {REQUIRE_ENV}=1 to make this a failure)"
    );
    false
}

/// A unique scratch directory under the system temp dir.
pub(crate) fn scratch(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hush-testkit-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Whether an executable called `name` is found on `PATH`.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(name);
            p.is_file()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_component_runs() {
        assert!(system_component("anything", true));
    }

    #[test]
    fn finds_sh_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("surely-no-such-program-hush"));
    }
}
