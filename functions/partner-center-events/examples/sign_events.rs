//! Writes the sample events `events/partner-center-events/*.json`: Function URL requests
//! carrying Partner Center webhooks signed with the sandbox's leaf key (RSA PKCS#1 v1.5 is
//! deterministic, so the committed signatures stay valid).
//!
//! ```sh
//! cargo run -p partner-center-events --example sign_events
//! ```
//!
//! The definitions live in `tests/it/support/signed_events.rs`; the handler tests fail when the
//! committed files differ from what this writes.

#[path = "../tests/it/support/signed_events.rs"]
mod signed_events;

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/partner-center-events");
    std::fs::create_dir_all(&dir)?;
    for event in signed_events::all() {
        let path = dir.join(format!("{}.json", event.name));
        std::fs::write(&path, event.json)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
