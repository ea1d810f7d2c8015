//! cosell-sync domain crate (placeholder while the model lands).
