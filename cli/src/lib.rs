//! `cosell`: the operator CLI of cosell-sync, as a library (the binary is `src/main.rs`).
//!
//! | Module | Holds |
//! |---|---|
//! | [`demo`] | `cosell demo`: the local walk-through against the sandbox ([`demo::run_demo`]) |

pub mod demo;
