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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU ticks of a process and all its living descendants, per pid (e.g. a PostgreSQL
/// postmaster and its backends). Compare two samples with [`tree_cpu_delta`].
pub fn tree_cpu(root: u32) -> HashMap<u32, u64> {
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some((ppid, utime, stime)) = parse_stat(&stat) {
                    procs.push((pid, ppid, utime + stime));
                }
            }
        }
    }
    let mut in_tree: HashMap<u32, u64> = HashMap::new();
    if let Some(&(_, _, t)) = procs.iter().find(|(p, _, _)| *p == root) {
        in_tree.insert(root, t);
    } else {
        return in_tree;
    }
    // Repeat until no new child joins (process lists are not sorted by ancestry).
    loop {
        let before = in_tree.len();
        for &(pid, ppid, ticks) in &procs {
            if !in_tree.contains_key(&pid) && in_tree.contains_key(&ppid) {
                in_tree.insert(pid, ticks);
            }
        }
        if in_tree.len() == before {
            return in_tree;
        }
    }
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
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        let cpu = cpu_times(me).expect("own stat");
        assert_eq!(cpu.total(), cpu.user + cpu.system);
        assert_eq!(cpu.since(cpu), CpuTimes::default());
        assert!(rss_bytes(me).unwrap_or(0) > 0);
        let tree = tree_cpu(me);
        assert!(tree.contains_key(&me));
        assert_eq!(tree_cpu_delta(&tree, &tree), Duration::ZERO);
    }
}
