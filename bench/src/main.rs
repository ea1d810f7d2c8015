//! `cosell-bench`: measures `partner-center-events` and `crm-events` (see the library docs) and
//! writes a JSON report per function. Exits 1 when a target is violated, 2 when the benchmark
//! could not run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use cosell_bench::report::table;
use cosell_bench::{Options, Report, crm_events, run, sandbox, scenario};
use cosell_domain::ids::CrmKind;

/// Benchmark of the partner-center-events and crm-events handlers against the sandbox and moto.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Events per kind (new, updated, duplicate, echo, concurrent_duplicate).
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Copies of each concurrent duplicate fired at once.
    #[arg(long, default_value_t = 5)]
    copies: usize,
    /// The CRM(s) to measure.
    #[arg(long, value_enum, default_value_t = CrmChoice::Both)]
    crm: CrmChoice,
    /// The direction(s) to measure: partner-center-events (to-crm), crm-events
    /// (to-partner-center).
    #[arg(long, value_enum, default_value_t = Direction::Both)]
    direction: Direction,
    /// Where to write the partner-center-events JSON report [default: <target
    /// dir>/bench/partner-center-events.json]; the crm-events report goes next to it as
    /// `crm-events.json`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The cosell-sandbox binary [default: next to this executable, built with cargo if
    /// missing].
    #[arg(long)]
    sandbox_bin: Option<PathBuf>,
    /// Print the function's log lines to stderr (by default they are formatted, as in Lambda,
    /// and discarded).
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Direction {
    /// partner-center-events only.
    ToCrm,
    /// crm-events only.
    ToPartnerCenter,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CrmChoice {
    Dataverse,
    Salesforce,
    Both,
}

impl CrmChoice {
    fn crms(self) -> Vec<CrmKind> {
        match self {
            Self::Dataverse => vec![CrmKind::Dataverse],
            Self::Salesforce => vec![CrmKind::Salesforce],
            Self::Both => vec![CrmKind::Dataverse, CrmKind::Salesforce],
        }
    }
}

/// `<target dir>/bench/partner-center-events.json`, the target dir being the one this
/// executable was built into.
fn default_out() -> PathBuf {
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("bench").join("partner-center-events.json")
}

fn init_logging(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().json().with_env_filter(filter);
    if verbose {
        builder.with_writer(std::io::stderr).init();
    } else {
        builder.with_writer(std::io::sink).init();
    }
}

fn write_report(report: &Report, out: &Path) -> anyhow::Result<()> {
    if let Some(dir) = out.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');
    std::fs::write(out, json)?;
    Ok(())
}

/// Both reports' `ok`.
async fn bench(args: Args) -> anyhow::Result<bool> {
    let out = args.out.unwrap_or_else(default_out);
    let log_dir = out
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::create_dir_all(&log_dir)?;
    let options = Options {
        events: args.events,
        copies: args.copies,
        crms: args.crm.crms(),
        aws_endpoint: scenario::aws_endpoint_from_env()?,
        region: std::env::var("AWS_REGION")
            .ok()
            .filter(|region| !region.trim().is_empty())
            .unwrap_or_else(|| "us-east-1".into()),
        sandbox_bin: sandbox::locate_binary(args.sandbox_bin.as_deref())?,
        log_dir,
    };
    let mut ok = true;
    if args.direction != Direction::ToPartnerCenter {
        let report = run(&options).await?;
        write_report(&report, &out)?;
        print!("{}", table(&report));
        println!("report: {}", out.display());
        ok &= report.ok;
    }
    if args.direction != Direction::ToCrm {
        let report = crm_events::run(&options).await?;
        let out = out.with_file_name("crm-events.json");
        write_report(&report, &out)?;
        print!("{}", table(&report));
        println!("report: {}", out.display());
        ok &= report.ok;
    }
    Ok(ok)
}

// The functions' own runtime (see their `main.rs`), so the handler runs as it does in Lambda.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    match bench(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("a target was violated (see the tables above and `targets` in the reports)");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
