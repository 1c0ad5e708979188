//! What a part of the daemon asks the loop to do, instead of calling back into it.
//!
//! Contract: a part changes only its own state and returns [`Effect`]s, in the order
//! they must happen; the loop (`Daemon::dispatch`) performs them in that order.

use hedge_wire::{Name, RecordKind};

use crate::monitor::incident::Incident;
use crate::monitor::usage::AccountantState;

/// One thing for the loop to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Append a record to the outbox.
    Record(RecordKind),
    /// Store an open incident durably (it survives a restart).
    SaveIncident(Incident),
    /// Forget a stored incident (resolved).
    ForgetIncident(u64),
    /// Self-repair: restart the instance if it runs.
    Repair(Name),
    /// Append a usage record and the instance's accounting state after it, as one.
    Usage {
        instance: Name,
        record: RecordKind,
        state: Box<AccountantState>,
    },
    /// Save an instance's accounting state between usage records.
    SaveUsage {
        instance: Name,
        state: Box<AccountantState>,
    },
}
