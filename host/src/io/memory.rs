//! The daemon's memory habits: malloc tuned before any thread starts, and
//! the start-up pages of its own executable given back once the first
//! session is up (docs/performance.md).

/// the page cache on first use. Best effort: errors are only logged.
pub fn release_startup_pages() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let exe = exe.to_string_lossy().into_owned();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !line.ends_with(exe.as_str()) || perms.contains('w') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a whole read-only, file-backed mapping of
        // our own executable as the kernel lists it; MADV_PAGEOUT only drops
        // resident pages (they fault back in unchanged), never the mapping.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        if rc != 0 {
            log::debug!(
                "madvise(MADV_PAGEOUT) {range}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// A long-running daemon that now and then holds a large buffer (a 16 MiB
/// frame, a command's capped output) should give it back when done. glibc
/// raises its mmap threshold after freeing a large block, so later large
/// blocks come from the heap and stay; a fixed threshold keeps them mapped
/// and returned on free. Fewer arenas bound the fragmentation of the
/// plugins' threads.
///
/// The trim threshold: under pipelined load each loop turn allocates its
/// answers and their TLS records (rustls holds at most 256 KiB) at the top
/// of the heap and frees them once written. With glibc's default of
/// 128 KiB that top was given back with `brk` and faulted in again turn
/// after turn (about 1 500 `brk` calls per 50 000 requests, measured with
/// `strace -k`); 512 KiB keeps one turn's worth, and no more, for reuse.
pub fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; called before any
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Free bytes at the top of the heap kept rather than given back to the
/// kernel (see [`tune_malloc`]).
const TRIM_THRESHOLD: libc::c_int = 512 * 1024;
