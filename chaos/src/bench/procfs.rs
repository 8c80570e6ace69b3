//! CPU time and resident memory of processes, read from `/proc` (Linux).

use std::collections::HashMap;
use std::ops::AddAssign;
use std::time::Duration;

/// Clock ticks per second used by `/proc/<pid>/stat`.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time of a process, split into user space (utime) and kernel (stime).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTimes {
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// The CPU used between `earlier` and `self` (never negative).
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl AddAssign for CpuTimes {
    fn add_assign(&mut self, other: CpuTimes) {
        self.user += other.user;
        self.system += other.system;
    }
}

/// utime and stime of one process.
pub fn cpu_times(pid: u32) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, utime, stime) = parse_stat(&stat)?;
    Some(CpuTimes {
        user: ticks_to_duration(utime),
        system: ticks_to_duration(stime),
    })
}

/// `(ppid, utime ticks, stime ticks)` from the text of `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    // The command name is in parentheses and may contain spaces or ')': split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime, stime))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_micros(ticks.saturating_mul(1_000_000) / ticks_per_second())
}

/// VmRSS of one process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// VmHWM of one process: the highest its RSS has been since it started, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One process as `/proc/<pid>/stat` shows it: its parent, its command name and the CPU
/// ticks it has used (user and kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSample {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub ticks: u64,
}

/// Every process of the machine, read once.
pub fn snapshot() -> Vec<ProcSample> {
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let (Some((ppid, utime, stime)), Some(comm)) = (parse_stat(&stat), parse_comm(&stat)) {
                    procs.push(ProcSample {
                        pid,
                        ppid,
                        comm: comm.to_string(),
                        ticks: utime + stime,
                    });
                }
            }
        }
    }
    procs
}

/// The command name, between the first '(' and the last ')'.
fn parse_comm(stat: &str) -> Option<&str> {
    stat.get(stat.find('(')? + 1..stat.rfind(')')?)
}

/// The pids of `root` and all its descendants in `procs`.
pub fn descendants(procs: &[ProcSample], root: u32) -> std::collections::HashSet<u32> {
    let mut in_tree = std::collections::HashSet::new();
    if !procs.iter().any(|p| p.pid == root) {
        return in_tree;
    }
    in_tree.insert(root);
    // Repeat until no new child joins (process lists are not sorted by ancestry).
    loop {
        let before = in_tree.len();
        for p in procs {
            if !in_tree.contains(&p.pid) && in_tree.contains(&p.ppid) {
                in_tree.insert(p.pid);
            }
        }
        if in_tree.len() == before {
            return in_tree;
        }
    }
}

/// CPU ticks of a process and all its living descendants, per pid (e.g. a PostgreSQL
/// postmaster and its backends). Compare two samples with [`tree_cpu_delta`].
pub fn tree_cpu(root: u32) -> HashMap<u32, u64> {
    let procs = snapshot();
    let tree = descendants(&procs, root);
    procs
        .into_iter()
        .filter(|p| tree.contains(&p.pid))
        .map(|p| (p.pid, p.ticks))
        .collect()
}

/// CPU spent by a process tree between two samples: processes in both count their growth,
/// processes born in between count all their time (those that died in between are lost).
pub fn tree_cpu_delta(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> Duration {
    let ticks: u64 = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks_to_duration(ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((1, 250, 50)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_comm(stat), Some("my (odd) prog"));
    }

    #[test]
    fn finds_a_process_tree() {
        let p = |pid, ppid| ProcSample {
            pid,
            ppid,
            comm: String::new(),
            ticks: 0,
        };
        // Children listed before their parents, and a stranger.
        let procs = [p(30, 20), p(20, 10), p(10, 1), p(40, 1)];
        let tree = descendants(&procs, 10);
        assert_eq!(tree, [10, 20, 30].into_iter().collect());
        assert!(descendants(&procs, 99).is_empty());
    }

    #[test]
    fn cpu_times_add_and_subtract() {
        let ms = Duration::from_millis;
        let mut sum = CpuTimes {
            user: ms(7),
            system: ms(3),
        };
        sum += CpuTimes {
            user: ms(1),
            system: ms(2),
        };
        assert_eq!(sum.total(), ms(13));
        let later = CpuTimes {
            user: ms(10),
            system: ms(4),
        };
        assert_eq!(
            later.since(sum),
            CpuTimes {
                user: ms(2),
                system: Duration::ZERO
            }
        );
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    4096 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(2048 * 1024));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(4096 * 1024));
        assert_eq!(parse_status_kib("Name: x\n", "VmRSS:"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        let cpu = cpu_times(me).expect("own stat");
        assert_eq!(cpu.total(), cpu.user + cpu.system);
        assert_eq!(cpu.since(cpu), CpuTimes::default());
        assert!(rss_bytes(me).unwrap_or(0) > 0);
        assert!(peak_rss_bytes(me) >= rss_bytes(me));
        let tree = tree_cpu(me);
        assert!(tree.contains_key(&me));
        assert_eq!(tree_cpu_delta(&tree, &tree), Duration::ZERO);
    }
}
