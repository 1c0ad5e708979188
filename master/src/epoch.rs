//! The master's epoch: what lets a master restored from an older backup deliver new
//! desired states to nodes that applied later generations of its previous life.
//!
//! Contract (pure; the store keeps the epoch in its `meta` table and applies
//! [`next_generation`] to every generation it hands out):
//! - A generation is `epoch << 32 | counter`: its high 32 bits are the master's epoch,
//!   its low 32 bits a counter within it (see `hedge_wire::DesiredState::generation`,
//!   signed with the rest of the state). Nodes compare generations as plain `u64`s, so
//!   nothing changes on a node: a state of a later epoch is newer than every state of
//!   an earlier one.
//! - A store starts in epoch 0. `hedge master recover` installs a backup and raises the
//!   epoch to [`recovered_epoch`]: `max(old + 1, now in seconds since the Unix epoch)`,
//!   `old` being the highest epoch either the backup or the store it replaces held. The
//!   clock term keeps epochs growing when backups are restored out of order (a backup
//!   older than an earlier recover holds a lower epoch than that life issued); `+ 1`
//!   keeps them growing under a clock that is wrong or set back.
//! - The next generation of a node is [`next_generation`]: `max(high_water + 1, epoch
//!   << 32 | 1)`, `high_water` the highest generation the store handed out or stored for
//!   it. So the first state a recovered master writes for any node is above whatever the
//!   old life issued in its epochs (a life never issues 2^32 states to one node), and
//!   generations still only grow within a store.
//! - SQLite holds generations as signed 64-bit integers: an epoch stays below 2^31
//!   (seconds since 1970 until 2038; [`next_generation`] returns `None` past
//!   `i64::MAX`, which the store reports as exhausted).

/// The epoch a recovered store gets: `max(old + 1, now_s)` (saturating at `u32::MAX`).
pub fn recovered_epoch(old: u32, now_s: u32) -> u32 {
    old.saturating_add(1).max(now_s)
}

/// The epoch of `generation` (its high 32 bits).
pub fn epoch_of(generation: u64) -> u32 {
    u32::try_from(generation >> 32).unwrap_or(u32::MAX)
}

/// The first generation of `epoch`: `epoch << 32 | 1`.
pub fn first_of(epoch: u32) -> u64 {
    u64::from(epoch) << 32 | 1
}

/// The generation after `high_water` in `epoch`: `max(high_water + 1, first_of(epoch))`;
/// `None` when that leaves SQLite's signed 64-bit range.
pub fn next_generation(high_water: u64, epoch: u32) -> Option<u64> {
    high_water
        .checked_add(1)
        .map(|g| g.max(first_of(epoch)))
        .filter(|g| i64::try_from(*g).is_ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_epoch_grows_with_the_clock_and_without_it() {
        assert_eq!(recovered_epoch(0, 1_764_000_000), 1_764_000_000);
        // A clock set back, or restoring twice within a second: still one more.
        assert_eq!(recovered_epoch(1_764_000_000, 5), 1_764_000_001);
        assert_eq!(recovered_epoch(1_764_000_000, 1_764_000_000), 1_764_000_001);
        assert_eq!(recovered_epoch(u32::MAX, 0), u32::MAX);
    }

    #[test]
    fn the_first_generation_of_a_new_epoch_is_above_every_older_one() {
        // Epoch 0: plain counting.
        assert_eq!(next_generation(0, 0), Some(1));
        assert_eq!(next_generation(41, 0), Some(42));
        // The old life went on to generation 1000 after the backup held 40; the restored
        // store's high water is 40: its next generation is above 1000 (and everything
        // of epoch 0), and the old life's is not.
        let old_life = 1000u64;
        let restored = next_generation(40, recovered_epoch(0, 1_764_000_000)).unwrap();
        assert!(restored > old_life);
        assert_eq!(restored, first_of(1_764_000_000));
        assert_eq!(epoch_of(restored), 1_764_000_000);
        assert!(next_generation(40, 0).unwrap() <= old_life);
        // Within the epoch, counting goes on.
        assert_eq!(next_generation(restored, 1_764_000_000), Some(restored + 1));
        // A high water already above the epoch's first keeps growing.
        assert_eq!(next_generation(first_of(9) + 5, 3), Some(first_of(9) + 6));
        // A second recover from the same old backup still moves past the first one's.
        let again = recovered_epoch(epoch_of(restored), 1_764_000_000);
        assert!(next_generation(40, again).unwrap() > restored + 1_000_000);
        // Past SQLite's range: none.
        assert_eq!(next_generation(0, 1 << 31), None);
        assert_eq!(next_generation(u64::MAX, 0), None);
    }
}
