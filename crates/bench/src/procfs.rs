//! What the benchmark reads about processes: resident memory and CPU time from `/proc`, and the
//! open-file limit.

use anyhow::{anyhow, bail, Context};

/// Resident set size (`VmRSS`) of a process, in KiB.
pub fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Peak resident set size (`VmHWM`) of a process, in KiB.
pub fn rss_peak_kb(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmHWM:")
}

/// Threads of a process.
pub fn threads(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "Threads:")
}

fn status_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// Open file descriptors of a process (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd")).with_context(|| format!("reading /proc/{pid}/fd"))?.count())
}

/// User + system CPU time of a process (all its threads), in seconds.
pub fn cpu_secs(pid: Option<u32>) -> anyhow::Result<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis
    // start at field 3 (state). utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(|| anyhow!("malformed {path}"))
    };
    let total = ticks(14 - 3)? + ticks(15 - 3)?;
    Ok(total as f64 / clock_ticks_per_sec())
}

/// CPU time the whole machine spent busy (all CPUs, everything but idle and iowait), in
/// seconds, from the first line of `/proc/stat`.
pub fn machine_busy_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().filter(|l| l.starts_with("cpu ")).ok_or_else(|| anyhow!("malformed /proc/stat"))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    if v.len() < 5 {
        bail!("malformed /proc/stat");
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = v.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, x)| x).sum();
    Ok(busy as f64 / clock_ticks_per_sec())
}

/// Datagrams the kernel dropped on each UDP socket of this network namespace for want of room
/// in its receive buffer, by local port (from the `drops` column of `/proc/net/udp`).
pub fn udp_drops_by_port() -> anyhow::Result<Vec<(u16, u64)>> {
    let table = std::fs::read_to_string("/proc/net/udp").context("reading /proc/net/udp")?;
    Ok(table.lines().skip(1).filter_map(parse_udp_line).collect())
}

/// `(local port, drops)` of one line of `/proc/net/udp`.
fn parse_udp_line(line: &str) -> Option<(u16, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
    let drops = fields.last()?.parse().ok()?;
    Some((port, drops))
}

/// A TCP socket of this network namespace whose local port is `port` (from `/proc/net/tcp`):
/// the server's side of its connections, and those still in its accept queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// The kernel's state number: 1 ESTABLISHED, 10 LISTEN, … (`include/net/tcp_states.h`).
    pub state: u8,
    pub remote: std::net::Ipv4Addr,
}

/// TCP state number of an established connection.
pub const TCP_ESTABLISHED: u8 = 1;

/// The IPv4 TCP sockets whose local port is `port`.
pub fn tcp_sockets_on_port(port: u16) -> anyhow::Result<Vec<TcpSocket>> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    Ok(table.lines().skip(1).filter_map(parse_tcp_line).filter(|(p, _)| *p == port).map(|(_, s)| s).collect())
}

/// `(local port, socket)` of one line of `/proc/net/tcp`.
fn parse_tcp_line(line: &str) -> Option<(u16, TcpSocket)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
    let remote = u32::from_str_radix(fields.get(2)?.split_once(':')?.0, 16).ok()?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    // The address is printed as the kernel holds it: network order read as a little-endian word.
    Some((port, TcpSocket { state, remote: std::net::Ipv4Addr::from(remote.swap_bytes()) }))
}

/// The soft and hard limits on open files of a process (`Max open files` in
/// `/proc/<pid>/limits`; `None` for unlimited).
pub fn nofile_limits(pid: u32) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .with_context(|| format!("reading /proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .ok_or_else(|| anyhow!("no open-file limit in /proc/{pid}/limits"))?;
    let mut v = line.split_whitespace().map(|f| f.parse::<u64>().ok());
    Ok((v.next().flatten(), v.next().flatten()))
}

/// Number of CPUs this process could use when it started (before any pinning).
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Raises the soft limit on open files to at least `want` (up to the hard limit). Child
/// processes inherit it. Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < want && lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(lim.rlim_cur)
}

/// Restricts the calling thread (and the threads and processes it starts afterwards) to these
/// CPUs.
pub fn pin_to_cpus(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// Parses a CPU list such as `0` or `1,2,3`.
pub fn parse_cpu_list(s: &str) -> anyhow::Result<Vec<usize>> {
    s.split(',').map(|c| c.trim().parse().with_context(|| format!("bad CPU number {c:?}"))).collect()
}

/// CPU time of the calling thread, in seconds.
pub fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own; the clock id is a constant.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if ok {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

/// `x` rounded to `digits` decimals (for the JSON lines).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_line_of_proc_net_udp() {
        let line = "  237: 0100007F:BAD0 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 52383 2 00000000dcd744d2 17";
        assert_eq!(super::parse_udp_line(line), Some((0xBAD0, 17)));
        assert_eq!(super::parse_udp_line("garbage"), None);
    }

    #[test]
    fn reads_a_line_of_proc_net_tcp() {
        let line = "   3: 0100007F:8A3B 0200007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 918273 1 0000000000000000 20 4 30 10 -1";
        let (port, s) = super::parse_tcp_line(line).expect("a socket");
        assert_eq!(port, 0x8A3B);
        assert_eq!(
            s,
            super::TcpSocket { state: super::TCP_ESTABLISHED, remote: std::net::Ipv4Addr::new(127, 0, 0, 2) }
        );
        assert_eq!(super::parse_tcp_line("  sl  local_address rem_address   st"), None);
    }
}
