//! `memory::release_free_memory` gives freed memory back to the system even when it lies in
//! holes under memory still in use, which `free` alone never returns (glibc only). Its own test
//! binary: nothing else allocates in this process meanwhile.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn memory_freed_in_holes_goes_back_to_the_system() {
    fn rss_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
        line.trim().trim_end_matches("kB").trim().parse().expect("a number")
    }
    // 64 MiB in 4 KiB blocks, every one written to; then all but every 64th block freed, so
    // the free space lies in holes between blocks still in use, as after a crowd has left.
    let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|i| vec![i as u8 | 1; 4096]).collect();
    let mut kept = Vec::new();
    for (i, b) in blocks.drain(..).enumerate() {
        if i % 64 == 0 {
            kept.push(b);
        }
    }
    let before = rss_kb();
    let took = huddle_server::memory::release_free_memory().expect("glibc trims");
    let after = rss_kb();
    assert!(before >= after + 32 * 1024, "RSS {before} KiB before the release, {after} KiB after ({took:?})");
    assert!(kept.iter().all(|b| b.len() == 4096 && b[1] == b[0]), "the blocks in use are intact");
}
