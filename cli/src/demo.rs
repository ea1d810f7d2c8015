//! `cosell demo`.

pub async fn run() -> anyhow::Result<()> {
    println!("cosell-sync demo: coming with the functions.");
    Ok(())
}
