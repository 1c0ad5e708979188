//! Keeping a long-running daemon's resident memory near what it uses.
//!
//! A burst of work (the boot, a run of requests, a drain after an outage) maps pages of
//! the binary and its libraries that the idle daemon never touches again, and leaves
//! free memory in the heap. They stay resident until the kernel reclaims them under
//! pressure. [`Release`] decides when to give them back early; [`keep_near_working_set`]
//! drives it: every [`TICK`] it reads how many file-backed pages the process has mapped
//! and, once a burst has added more than [`MARGIN_KIB`] to the working set and a tick
//! has then passed with at most [`QUIET_KIB`] more mapped, it releases
//! - the pages of the loaded objects' read-only segments (code and constants: what
//!   `dl_iterate_phdr` reports as loadable and not writable, in objects without text
//!   relocations). Such a page can hold nothing but the file's bytes, so releasing it
//!   loses nothing: it stays in the page cache and comes back at the daemon's next
//!   touch, from memory. Relocated data (RELRO) sits in writable segments and is never
//!   touched. This is what the kernel's reclaim does to the same pages, done when the
//!   daemon knows they went cold.
//! - free memory at the top and in the middle of glibc's heap (`malloc_trim`).
//!
//! The working set is the fewest pages mapped in the last [`HORIZON_TICKS`] readings,
//! across releases: a burst that maps its pages again right after a release (or is read
//! in the middle of doing so) does not raise it, and a working set that grew for good is
//! its new level once the horizon has passed. Until the first release, everything
//! mapped is the boot's burst. A release that came while a burst was still running
//! (a boot that starts its instances from the store) leaves every later reading high;
//! so once [`PROBE_TICKS`] have passed since the last release, a quiet tick releases
//! whatever the working set, and the readings after it show the working set again. Two
//! releases are at least [`MIN_GAP_TICKS`] apart: code
//! that runs every few seconds maps part of what was released again, and is released
//! again at most that often (a release costs a few dozen system calls and the page
//! faults that map the working set back).
//!
//! Contract: nothing is released while a burst is still mapping pages, and nothing
//! written by the process is ever released.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

/// How long between two readings of the mapped pages.
pub const TICK: Duration = Duration::from_secs(1);

/// How much a burst must add to the working set before it is released (KiB). Below it a
/// release is not worth the page faults that map the working set again.
pub const MARGIN_KIB: u64 = 512;

/// The least time (ticks) between two releases.
pub const MIN_GAP_TICKS: u32 = 10;

/// How many readings (ticks) the working set is the least of: a minute, the period of
/// the node's longest idle duty (usage and health records).
pub const HORIZON_TICKS: usize = 60;

/// After this many ticks without a release, a quiet tick releases even with nothing
/// above the working set: a probe, in case the working set was read during a burst.
pub const PROBE_TICKS: u32 = 30;

/// A tick that maps at most this much more (KiB) is quiet: new instances' first checks
/// and walks map a few pages each second for a while after a burst.
pub const QUIET_KIB: u64 = 128;

/// When to release. A pure core: fed one reading of the mapped file pages (KiB) per tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The previous reading, the baseline for "quiet".
    previous: Option<u64>,
    /// The last [`HORIZON_TICKS`] readings, oldest first: the working set is their least.
    recent: VecDeque<u64>,
    /// Ticks since the last release; `None` before the first (the boot's burst).
    since: Option<u32>,
}

impl Default for Release {
    fn default() -> Self {
        Self::new()
    }
}

impl Release {
    /// At start-up: everything mapped so far is a burst (the boot).
    pub fn new() -> Self {
        Release {
            previous: None,
            recent: VecDeque::with_capacity(HORIZON_TICKS),
            since: None,
        }
    }

    /// One reading of the mapped file pages (KiB); true when the driver should release
    /// now.
    pub fn tick(&mut self, mapped_kib: u64) -> bool {
        let quiet = self.previous.is_some_and(|p| mapped_kib <= p + QUIET_KIB);
        self.previous = Some(mapped_kib);
        if self.recent.len() == HORIZON_TICKS {
            self.recent.pop_front();
        }
        self.recent.push_back(mapped_kib);
        let low = match self.since.as_mut() {
            None => 0,
            Some(since) => {
                *since = since.saturating_add(1);
                self.recent.iter().copied().min().unwrap_or(mapped_kib)
            }
        };
        let gap_over = self.since.is_none_or(|s| s >= MIN_GAP_TICKS);
        let probe = self.since.is_some_and(|s| s >= PROBE_TICKS);
        if !(quiet && gap_over && (probe || mapped_kib > low + MARGIN_KIB)) {
            return false;
        }
        self.since = Some(0);
        // The release unmaps pages: the next reading is lower, no baseline for "quiet".
        self.previous = None;
        true
    }
}

/// One loadable segment of a loaded object, as its program header gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Where it starts in memory (load bias + `p_vaddr`).
    pub start: usize,
    /// `p_memsz`.
    pub len: usize,
    /// `PF_W`.
    pub writable: bool,
}

/// One loaded object (the binary, a library), as `dl_iterate_phdr` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Object {
    /// Its `PT_LOAD` segments.
    pub segments: Vec<Segment>,
    /// It has text relocations: its read-only segments were written at load time.
    pub text_relocations: bool,
    /// It is the kernel's vDSO, not a file.
    pub vdso: bool,
}

/// The whole pages that may be released: those of the read-only segments of objects
/// that are files without text relocations, never a page that also belongs to a
/// writable segment. Pure.
pub fn releasable(objects: &[Object], page: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| !o.vdso && !o.text_relocations) {
        let written: Vec<Range<usize>> = o
            .segments
            .iter()
            .filter(|s| s.writable)
            .map(|s| s.start / page * page..(s.start + s.len).div_ceil(page) * page)
            .collect();
        for s in o.segments.iter().filter(|s| !s.writable) {
            // Inward to whole pages: a partial page may be shared with a neighbour.
            let (start, end) = (
                s.start.div_ceil(page) * page,
                (s.start + s.len) / page * page,
            );
            let clash = written.iter().any(|w| w.start < end && start < w.end);
            if start < end && !clash {
                out.push(start..end);
            }
        }
    }
    out
}

/// Runs [`Release`] every [`TICK`] for as long as the task lives. Off Linux, or if
/// `/proc` cannot be read, it does nothing.
pub async fn keep_near_working_set() {
    let mut release = Release::new();
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(mapped) = os::mapped_file_kib() else {
            return;
        };
        if release.tick(mapped) {
            let released = os::release();
            tracing::debug!(
                mapped_kib = mapped,
                range_kib = released / 1024,
                "released cold pages"
            );
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod os {
    use std::ffi::c_void;

    use nix::libc;

    use super::{Object, Segment};

    /// The file-backed (and shared) pages mapped by this process, in KiB: the third
    /// field of `/proc/self/statm`.
    pub fn mapped_file_kib() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(2)?.parse().ok()?;
        Some(pages * (page_size() / 1024) as u64)
    }

    fn page_size() -> usize {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|b| usize::try_from(b).ok())
            .unwrap_or(4096)
    }

    /// Releases what the module describes; returns the bytes of the ranges released
    /// (resident or not).
    pub fn release() -> usize {
        let mut released = 0;
        for range in super::releasable(&loaded_objects(), page_size()) {
            let Some(addr) = std::ptr::NonNull::new(range.start as *mut c_void) else {
                continue;
            };
            #[allow(unsafe_code)]
            // SAFETY: the range is whole pages of a read-only loadable segment of an
            // object without text relocations (`releasable`): no byte in it was written
            // by this process, so MADV_DONTNEED only unmaps the file's own pages, and
            // the next access maps the same bytes again. Code running in it meanwhile
            // (other threads) takes a minor fault.
            let done = unsafe {
                nix::sys::mman::madvise(
                    addr,
                    range.len(),
                    nix::sys::mman::MmapAdvise::MADV_DONTNEED,
                )
            };
            if done.is_ok() {
                released += range.len();
            }
        }
        #[allow(unsafe_code)]
        // SAFETY: malloc_trim takes the allocator's locks itself and only returns free
        // memory to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        released
    }

    const DT_NULL: usize = 0;
    const DT_TEXTREL: usize = 22;
    const DT_FLAGS: usize = 30;
    const DF_TEXTREL: usize = 4;
    const AT_SYSINFO_EHDR: libc::c_ulong = 33;

    /// Every object loaded in the process, from `dl_iterate_phdr`.
    pub(super) fn loaded_objects() -> Vec<Object> {
        let mut objects: Vec<Object> = Vec::new();
        #[allow(unsafe_code)]
        // SAFETY: `collect` is called synchronously, once per object, with the loader's
        // lock held, and gets back the `Vec` passed here as `data`.
        unsafe {
            libc::dl_iterate_phdr(Some(collect), (&mut objects as *mut Vec<Object>).cast());
        }
        #[allow(unsafe_code)]
        // SAFETY: getauxval only reads the auxiliary vector.
        let vdso = usize::try_from(unsafe { libc::getauxval(AT_SYSINFO_EHDR) }).unwrap_or(0);
        for o in &mut objects {
            o.vdso = vdso != 0
                && o.segments
                    .iter()
                    .any(|s| (s.start..s.start + s.len).contains(&vdso));
        }
        objects
    }

    #[allow(unsafe_code)]
    unsafe extern "C" fn collect(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid `info` for this call, whose program
        // headers are `dlpi_phnum` entries at `dlpi_phdr`, and `data` is the `Vec` that
        // `loaded_objects` passed.
        let (info, objects) = unsafe { (&*info, &mut *data.cast::<Vec<Object>>()) };
        let headers = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: as above.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        // Addresses of this process: native words, which the conversions never truncate.
        let Ok(base) = usize::try_from(info.dlpi_addr) else {
            return 0;
        };
        let mut object = Object::default();
        for h in headers {
            let (Ok(vaddr), Ok(len)) = (usize::try_from(h.p_vaddr), usize::try_from(h.p_memsz))
            else {
                continue;
            };
            let start = base.wrapping_add(vaddr);
            if h.p_type == libc::PT_LOAD {
                object.segments.push(Segment {
                    start,
                    len,
                    writable: h.p_flags & libc::PF_W != 0,
                });
            } else if h.p_type == libc::PT_DYNAMIC {
                // SAFETY: PT_DYNAMIC is the object's dynamic section, mapped while the
                // object is loaded: pairs of (tag, value) words ending with DT_NULL.
                object.text_relocations =
                    unsafe { has_text_relocations(start as *const [usize; 2]) };
            }
        }
        objects.push(object);
        0
    }

    /// # Safety
    /// `dynamic` points at a dynamic section: `[tag, value]` pairs ending with DT_NULL.
    #[allow(unsafe_code)]
    unsafe fn has_text_relocations(mut dynamic: *const [usize; 2]) -> bool {
        loop {
            // SAFETY: the caller's contract; the walk stops at DT_NULL.
            let [tag, value] = unsafe { dynamic.read() };
            match tag {
                DT_NULL => return false,
                DT_TEXTREL => return true,
                DT_FLAGS if value & DF_TEXTREL != 0 => return true,
                _ => {}
            }
            // SAFETY: not the last entry (that is DT_NULL).
            dynamic = unsafe { dynamic.add(1) };
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod os {
    pub fn mapped_file_kib() -> Option<u64> {
        None
    }
    pub fn release() -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(readings: &[u64]) -> Vec<bool> {
        let mut r = Release::new();
        readings.iter().map(|&k| r.tick(k)).collect()
    }

    #[test]
    fn the_boot_is_released_at_its_first_quiet_tick() {
        assert_eq!(run(&[4000, 6000, 7000, 7000]), [false, false, false, true]);
    }

    #[test]
    fn nothing_is_released_while_pages_are_still_being_mapped() {
        assert_eq!(run(&[1000, 2000, 3000, 4000, 5000]), [false; 5]);
    }

    #[test]
    fn a_trickle_of_pages_after_a_burst_is_quiet() {
        let step = QUIET_KIB;
        assert_eq!(
            run(&[4000, 6000, 6000 + step, 6000 + 2 * step]),
            [false, false, true, false]
        );
        assert_eq!(run(&[4000, 6000, 6000 + step + 4]), [false, false, false]);
    }

    #[test]
    fn after_a_release_only_a_burst_above_the_working_set_is_released() {
        let mut r = released_at_boot();
        // The working set: 1,500 KiB.
        for _ in 0..3 {
            assert!(!r.tick(1500));
        }
        // A small growth is not worth a release, quiet or not (until a probe is due).
        for _ in 0..20 {
            assert!(!r.tick(1500 + MARGIN_KIB));
        }
        // A burst above the margin: released once it is over.
        assert!(!r.tick(3000));
        assert!(!r.tick(3500));
        assert!(r.tick(3500));
    }

    #[test]
    fn two_releases_are_at_least_the_least_gap_apart() {
        let mut r = released_at_boot();
        assert!(!r.tick(1000));
        assert_eq!(1 + ticks_until_released(&mut r, 4000), MIN_GAP_TICKS);
    }

    /// A core that has released its boot (6,000 KiB).
    fn released_at_boot() -> Release {
        let mut r = Release::new();
        assert!(!r.tick(6000));
        assert!(r.tick(6000));
        r
    }

    /// Ticks with `kib` until `r` releases, the releasing tick included.
    fn ticks_until_released(r: &mut Release, kib: u64) -> u32 {
        ticks_until_released_within(r, kib, MIN_GAP_TICKS)
    }

    /// As `ticks_until_released`; fails past `most` ticks.
    fn ticks_until_released_within(r: &mut Release, kib: u64, most: u32) -> u32 {
        let mut ticks = 1;
        while !r.tick(kib) {
            ticks += 1;
            assert!(ticks <= most, "not released within {most} ticks");
        }
        ticks
    }

    #[test]
    fn a_burst_that_maps_its_pages_again_through_a_release_is_released_again() {
        let mut r = released_at_boot();
        for _ in 0..20 {
            assert!(!r.tick(2600));
        }
        assert!(!r.tick(5000));
        assert!(r.tick(5000));
        // The burst went on: it mapped its pages again before the next reading, then
        // stopped. Its level is not the working set.
        assert_eq!(ticks_until_released(&mut r, 4900), MIN_GAP_TICKS);
    }

    #[test]
    fn a_working_set_that_grew_for_good_is_only_probed_once_the_horizon_has_passed() {
        let mut r = released_at_boot();
        // A minute at 1,000 KiB (only probes release).
        let probes = (0..HORIZON_TICKS).filter(|_| r.tick(1000)).count();
        assert!(probes <= HORIZON_TICKS / PROBE_TICKS as usize);
        // From now on 3,000 KiB are in use: each release gives nothing back for long.
        // Released every gap within the horizon, then only by the probes.
        let released: Vec<bool> = (0..3 * HORIZON_TICKS).map(|_| r.tick(3000)).collect();
        let count = |ticks: &[bool]| ticks.iter().filter(|&&b| b).count();
        assert!(count(&released[..HORIZON_TICKS]) >= 3);
        let later = count(&released[HORIZON_TICKS..]);
        assert!(
            later <= 2 * HORIZON_TICKS / PROBE_TICKS as usize + 1,
            "{later} releases"
        );
    }

    #[test]
    fn a_working_set_read_during_a_burst_is_probed_after_a_while() {
        // A boot that starts instances: its release comes while they still map pages,
        // and no reading after it is low.
        let mut r = Release::new();
        assert!(!r.tick(6000));
        assert!(r.tick(6000));
        let ticks = ticks_until_released_within(&mut r, 4800, 2 * PROBE_TICKS);
        assert_eq!(ticks, PROBE_TICKS);
        // The probe showed the working set: a burst above it is released after the gap.
        for _ in 0..MIN_GAP_TICKS {
            assert!(!r.tick(2600));
        }
        assert!(!r.tick(4800));
        assert!(r.tick(4800));
    }

    #[test]
    fn code_that_comes_back_every_few_seconds_is_released_at_most_every_gap() {
        let mut r = released_at_boot();
        // Every 4 s: released at most once a gap, not every time it comes back.
        let releases = periodic(&mut r, 4, 3600);
        assert!(
            releases <= 3600 / MIN_GAP_TICKS,
            "{releases} releases in an hour"
        );
        // Every 15 s, longer than the gap: released each time it comes back.
        let mut r = released_at_boot();
        let releases = periodic(&mut r, 15, 3600);
        assert!(
            (200..=240).contains(&releases),
            "{releases} releases in an hour"
        );
    }

    #[test]
    fn the_same_level_is_released_again_after_a_gap_whatever_the_earlier_level() {
        // The boot and a later burst of requests map about as much.
        let mut r = released_at_boot();
        assert!(!r.tick(1500));
        for _ in 0..20 {
            assert!(!r.tick(1500));
        }
        assert!(!r.tick(6100));
        assert!(r.tick(6100), "a burst is released once it is over");
    }

    /// Ticks of a process whose idle working set is 1,000 KiB and which maps 2,000 KiB
    /// more every `period` ticks until they are released: how many releases.
    fn periodic(r: &mut Release, period: u32, ticks: u32) -> u32 {
        let (mut extra, mut releases) = (false, 0);
        for t in 0..ticks {
            extra |= t % period == period - 1;
            if r.tick(if extra { 3000 } else { 1000 }) {
                extra = false;
                releases += 1;
            }
        }
        releases
    }

    const PAGE: usize = 4096;

    /// `releasable` as (start, end) pairs.
    fn spans(objects: &[Object]) -> Vec<(usize, usize)> {
        releasable(objects, PAGE)
            .into_iter()
            .map(|r| (r.start, r.end))
            .collect()
    }

    fn seg(start: usize, len: usize, writable: bool) -> Segment {
        Segment {
            start,
            len,
            writable,
        }
    }

    #[test]
    fn read_only_segments_are_released_whole_pages_inward() {
        let binary = Object {
            segments: vec![
                seg(0x1000, 0x30_000, false),    // headers, rodata
                seg(0x31_800, 0x3a_0000, false), // text, starts mid-page
                seg(0x3d2_000, 0x20_000, true),  // RELRO, data
            ],
            ..Object::default()
        };
        assert_eq!(
            releasable(&[binary], PAGE),
            [0x1000..0x31_000, 0x32_000..0x3d1_000]
        );
    }

    #[test]
    fn a_page_shared_with_a_writable_segment_is_never_released() {
        let o = Object {
            segments: vec![seg(0x1000, 0x2800, false), seg(0x3800, 0x1000, true)],
            ..Object::default()
        };
        // The read-only segment's whole pages are 0x1000..0x3000, the writable one's
        // pages start at 0x3000.
        assert_eq!(spans(&[o]), [(0x1000, 0x3000)]);
        let clash = Object {
            segments: vec![seg(0x1000, 0x3000, false), seg(0x3000, 0x1000, true)],
            ..Object::default()
        };
        assert!(releasable(&[clash], PAGE).is_empty());
    }

    #[test]
    fn objects_with_text_relocations_and_the_vdso_are_left_alone() {
        let code = vec![seg(0x10_000, 0x10_000, false)];
        let textrel = Object {
            segments: code.clone(),
            text_relocations: true,
            vdso: false,
        };
        let vdso = Object {
            segments: code.clone(),
            text_relocations: false,
            vdso: true,
        };
        assert!(releasable(&[textrel, vdso], PAGE).is_empty());
        let plain = Object {
            segments: code,
            ..Object::default()
        };
        assert_eq!(spans(&[plain]), [(0x10_000, 0x20_000)]);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn this_process_has_releasable_code_and_its_data_is_not_in_it() {
        static WRITTEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        WRITTEN.store(1, std::sync::atomic::Ordering::Relaxed);
        let ranges = releasable(&os::loaded_objects(), 4096);
        let code = this_process_has_releasable_code_and_its_data_is_not_in_it as fn() as usize;
        let data = &WRITTEN as *const _ as usize;
        assert!(ranges.iter().any(|r| r.contains(&code)), "{ranges:x?}");
        assert!(!ranges.iter().any(|r| r.contains(&data)), "{ranges:x?}");
    }
}
