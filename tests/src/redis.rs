//! Redis for tests: a `redis-server` of a test's own (so that it can stop and restart it
//! without disturbing other tests), and the test command's shared one.
//!
//! `tests/run.sh` installs `redis-server` when missing and exports `TROUPE_TEST_REDIS_URL`
//! (a server started by `tests/redis.sh`). Without a `redis-server` binary the Redis tests
//! fail, unless `TROUPE_TEST_SKIP_REDIS=1` is set: then they print a line and return.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::unique;

/// The `redis-server` binary: from `PATH`, else `/usr/bin` or `/usr/local/bin`.
pub fn redis_server_bin() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|bin| is_executable(bin))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether a Redis test should be skipped: `true` (after printing why) when there is no
/// `redis-server` and `TROUPE_TEST_SKIP_REDIS` is set. Without the binary and without that
/// setting it panics, telling to run `tests/run.sh`.
pub fn skip_without_redis(test: &str) -> bool {
    if redis_server_bin().is_some() {
        return false;
    }
    if std::env::var_os("TROUPE_TEST_SKIP_REDIS").is_some() {
        println!("{test}: skipped: no redis-server binary and TROUPE_TEST_SKIP_REDIS is set");
        return true;
    }
    panic!(
        "no redis-server binary (looked in PATH, /usr/bin, /usr/local/bin): run tests/run.sh \
         (it installs redis-server and starts Redis), or set TROUPE_TEST_SKIP_REDIS=1 to skip \
         the Redis tests"
    );
}

/// The test command's shared Redis (`TROUPE_TEST_REDIS_URL`), for tests that never stop it.
/// `None` (after printing why) when it is unset and `TROUPE_TEST_SKIP_REDIS` is set; panics
/// when it is unset otherwise.
pub fn shared_redis_url(test: &str) -> Option<String> {
    match std::env::var("TROUPE_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("TROUPE_TEST_SKIP_REDIS").is_some() => {
            println!("{test}: skipped: TROUPE_TEST_REDIS_URL is unset and TROUPE_TEST_SKIP_REDIS is set");
            None
        }
        Err(_) => panic!(
            "TROUPE_TEST_REDIS_URL is not set: run tests/run.sh (it starts Redis), or set \
             TROUPE_TEST_SKIP_REDIS=1 to skip the Redis tests"
        ),
    }
}

/// Sends `PING` (RESP) to a Redis at `addr` and expects `+PONG`.
pub fn ping(addr: SocketAddr) -> anyhow::Result<()> {
    let limit = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, limit)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    stream.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    if reply.starts_with(b"+PONG\r\n") {
        Ok(())
    } else {
        bail!("PING to {addr} answered {:?}", String::from_utf8_lossy(&reply))
    }
}

/// A `redis-server` of this test's own on a free loopback port, keeping nothing on disk;
/// killed when dropped.
pub struct RedisProcess {
    child: Option<Child>,
    bin: PathBuf,
    addr: SocketAddr,
    /// Working folder: the server's log (`redis.log`).
    pub dir: PathBuf,
}

impl RedisProcess {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> anyhow::Result<Self> {
        let bin = redis_server_bin().ok_or_else(|| {
            anyhow!("no redis-server binary (looked in PATH, /usr/bin, /usr/local/bin): run tests/run.sh")
        })?;
        let dir = std::env::temp_dir().join(unique("troupe-test-redis"));
        std::fs::create_dir_all(&dir)?;
        let mut redis = RedisProcess {
            child: None,
            bin,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        let mut last = None;
        for _ in 0..5 {
            // Below the ephemeral range, so that the port is still free for `start_again`.
            redis.addr = crate::cluster::free_addr();
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("redis-server did not start")))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `PING` → `+PONG`.
    pub fn ping(&self) -> anyhow::Result<()> {
        ping(self.addr)
    }

    /// SIGTERM and wait for the server to exit (SIGKILL after 10 s).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("redis-server did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the stopped server again on the same port, retrying the bind for a few seconds
    /// (the old socket may linger, or something may hold the port for a moment).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("redis-server on {} is still running", self.addr);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("restarting redis-server on {}", self.addr)))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Runs the server in the foreground on `self.addr` and waits until it answers `PING`.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::create(self.log_path())?;
        let mut child = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "redis-server on {} exited ({status}): {}",
                    self.addr,
                    self.log_tail()
                );
            }
            if ping(self.addr).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "redis-server on {} did not answer PING within 10 s: {}",
                    self.addr,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
