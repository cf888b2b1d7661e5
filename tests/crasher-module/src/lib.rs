//! wsgate's dynamic module, the very binding (`module/src/lib.rs`), built with the test-only
//! `panic-probe`: a request with `x-wsgate-test-panic: 1` makes its request-header hook panic.
//! Never shipped; `tests/e2e_module_panic.rs` loads it.

#[path = "../../../module/src/lib.rs"]
mod binding;
