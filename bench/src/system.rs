//! What the benchmark reads about its own process and the machine: process CPU time, peak
//! resident set size, and the machine line (cores, CPU model, compiler, build profile).

use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;

/// CPU time (user + system) consumed by every thread of this process so far, including threads
/// that have exited (`CLOCK_PROCESS_CPUTIME_ID`, nanosecond resolution). Falls back to
/// `getrusage`'s user + system time (microseconds) if the clock is unavailable.
pub fn process_cpu_time() -> Duration {
    if let Ok(spec) = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID) {
        return Duration::from(spec);
    }
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|usage| {
            let micros = |value: nix::sys::time::TimeVal| {
                let secs = u64::try_from(value.tv_sec()).unwrap_or_default();
                let micros = u64::try_from(value.tv_usec()).unwrap_or_default();
                Duration::from_secs(secs) + Duration::from_micros(micros)
            };
            micros(usage.user_time()) + micros(usage.system_time())
        })
        .unwrap_or_default()
}

/// The peak resident set size of this process in KiB: `VmHWM` of `/proc/self/status`, else
/// `getrusage`'s `ru_maxrss` (KiB on Linux).
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status_kib(&status, "VmHWM"))
        .or_else(|| {
            getrusage(UsageWho::RUSAGE_SELF)
                .ok()
                .and_then(|usage| u64::try_from(usage.max_rss()).ok())
        })
        .unwrap_or_default()
}

/// A `Name:   1234 kB` line of `/proc/<pid>/status`, in KiB.
pub fn status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.trim() != name {
            return None;
        }
        let mut parts = value.split_whitespace();
        let number: u64 = parts.next()?.parse().ok()?;
        matches!(parts.next(), None | Some("kB")).then_some(number)
    })
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`): how busy the machine was.
pub fn load_average() -> Option<[f64; 3]> {
    parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

/// The first three fields of `/proc/loadavg` text.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    Some([
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ])
}

/// The first `model name` of `/proc/cpuinfo` text (x86), else its `Hardware` / `Processor` /
/// `CPU part` line (some ARM kernels).
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    let field = |wanted: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == wanted && !value.trim().is_empty()).then(|| value.trim().to_owned())
        })
    };
    ["model name", "Hardware", "Processor", "CPU part"]
        .into_iter()
        .find_map(field)
}

/// The machine the numbers were measured on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// Logical CPUs available to the process.
    pub nproc: usize,
    /// The CPU model (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// `linux`, …
    pub os: String,
    /// `x86_64`, `aarch64`, …
    pub arch: String,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// `rustc --version` of the compiler that built the benchmark.
    pub rustc: String,
    /// `release` or `debug` (whether debug assertions are on).
    pub profile: String,
}

impl Machine {
    /// This machine.
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".into()),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            rustc: env!("COSELL_BENCH_RUSTC_VERSION").to_owned(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
        }
    }

    /// One line for the README: `2 × AMD EPYC, linux x86_64 6.1.0, rustc 1.95.0 (…), release`.
    pub fn line(&self) -> String {
        let kernel = if self.kernel.is_empty() {
            String::new()
        } else {
            format!(" {}", self.kernel)
        };
        format!(
            "{} × {}, {} {}{}, {}, {}",
            self.nproc, self.cpu_model, self.os, self.arch, kernel, self.rustc, self.profile
        )
    }
}

/// The source the benchmark measured: the workspace's commit and whether tracked files had
/// uncommitted changes (best effort, `None` outside a git checkout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// `git rev-parse --short HEAD`.
    pub commit: String,
    /// Tracked files differ from the commit.
    pub dirty: bool,
}

impl Source {
    /// The workspace this crate was built from.
    pub fn detect() -> Option<Self> {
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(workspace)
                .args(args)
                .output()
                .ok()
                .filter(|output| output.status.success())
                .and_then(|output| String::from_utf8(output.stdout).ok())
        };
        let commit = git(&["rev-parse", "--short", "HEAD"])?.trim().to_owned();
        let status = git(&["status", "--porcelain", "--untracked-files=no"])?;
        Some(Self {
            commit,
            dirty: !status.trim().is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_in_kib() {
        let status =
            "Name:\tcosell-bench\nVmPeak:\t  900000 kB\nVmHWM:\t   45872 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(45_872));
        assert_eq!(status_kib(status, "VmRSS"), Some(40_000));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_kib("VmHWM: lots kB\n", "VmHWM"), None);
    }

    #[test]
    fn the_load_average_is_the_first_three_fields() {
        assert_eq!(
            parse_loadavg("3.10 2.68 2.49 3/412 19789\n"),
            Some([3.10, 2.68, 2.49])
        );
        assert_eq!(parse_loadavg("3.10 x"), None);
    }

    #[test]
    fn the_cpu_model_comes_from_the_first_model_name() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(x86).as_deref(), Some("AMD EPYC 7B13"));
        let arm = "processor\t: 0\nBogoMIPS\t: 243.75\nCPU part\t: 0xd0c\n";
        assert_eq!(cpu_model(arm).as_deref(), Some("0xd0c"));
        assert_eq!(cpu_model(""), None);
    }

    #[test]
    fn the_process_clock_moves_and_the_peak_rss_is_known() {
        let before = process_cpu_time();
        let mut x = 0_u64;
        for i in 0..2_000_000_u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_time() > before);
        assert!(peak_rss_kib() > 0);
    }

    #[test]
    fn the_machine_line_names_everything() {
        let machine = Machine {
            nproc: 2,
            cpu_model: "AMD EPYC".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            kernel: "6.1.0".into(),
            rustc: "rustc 1.95.0".into(),
            profile: "release".into(),
        };
        assert_eq!(
            machine.line(),
            "2 × AMD EPYC, linux x86_64 6.1.0, rustc 1.95.0, release"
        );
        assert!(Machine::detect().nproc >= 1);
    }
}
