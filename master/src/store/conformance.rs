//! The conformance suite of [`FleetStore`]: the contract every backend keeps, as tests.
//!
//! Contract: each test is a function generic over a [`Harness`], which opens handles on
//! one fresh, empty store of the backend under test, and asserts one part of the
//! trait's contract (with several handles where the contract is about several writers,
//! as several master processes are). [`fleet_store_suite!`] instantiates every one of
//! them as a `#[test]` for one backend, given an expression making a fresh harness.
//! SQLite runs it in `sqlite::tests`; a new backend adds a harness and one line. What
//! only one backend can be asked (its files, its schema migrations) is tested beside
//! that backend.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use hedge_wire::{
    IncidentState, InstanceRequest, InstanceStatus, Limits, Name, Record, RecordKind,
    RequestedState, RestartPolicy, Severity, SoftwareRelease, Up,
};

use super::{FleetStore, MasterStore};

pub(crate) mod backups;
pub(crate) mod desired;
pub(crate) mod evacuate;
pub(crate) mod fleet;
pub(crate) mod imports;
pub(crate) mod ingest;
pub(crate) mod moves;
pub(crate) mod node_states;
pub(crate) mod place;
pub(crate) mod restores;
pub(crate) mod stale;
pub(crate) mod views;
pub(crate) mod writers;

/// Every conformance test as a `#[test]`, each with the fresh [`Harness`] `$open` makes.
macro_rules! fleet_store_suite {
    ($open:expr) => {
        $crate::store::conformance::fleet_store_suite!(@each $open;
            ingest::ingest_is_idempotent_and_acks_the_covered_prefix,
            ingest::many_batches_share_one_commit_and_a_refused_one_leaves_the_others,
            ingest::gaps_wait_shed_seqs_count_and_express_batches_extend_nothing,
            ingest::bad_batches_are_refused_whole,
            ingest::a_node_over_its_byte_quota_is_refused_and_others_are_not,
            ingest::a_new_life_is_stored_beside_the_old_one_and_acked_on_its_own,
            ingest::repeated_events_and_conflicting_deliveries_are_counted,
            ingest::carried_batches_keep_their_path_and_count_refused_relayed_once,
            fleet::registry_health_and_allocation_counts,
            fleet::node_info_records_fill_the_registry,
            fleet::allocation_trusts_assigned_labels_and_region_not_reported_ones,
            fleet::supplied_artifacts_make_releases,
            views::usage_selects_overlapping_intervals,
            views::incidents_keep_latest_state_and_timeline,
            views::instances_join_desired_local_requests_and_reports,
            views::views_and_usage_hold_every_life,
            desired::desired_generations_only_grow,
            desired::states_near_their_expiry_are_re_signed_with_the_same_instances,
            place::a_state_too_large_to_deliver_is_refused_and_nothing_is_stored,
            place::destroyed_instances_are_pruned_only_once_reported_destroyed_after_that_generation,
            place::an_old_lifes_destroyed_report_does_not_prune_after_the_node_was_wiped,
            place::many_names_destroyed_in_turn_never_fill_the_desired_state,
            place::requesting_an_instance_on_another_node_moves_it,
            place::copies_left_by_an_older_master_are_reduced_to_one,
            imports::a_state_imports_what_the_owner_of_a_referenced_instance_published,
            imports::a_node_publishing_for_an_instance_it_does_not_own_changes_no_import,
            imports::a_consumer_left_behind_by_a_move_imports_once_the_old_copy_is_pruned,
            moves::a_move_gets_the_next_fence_and_the_old_copy_goes_once_the_new_one_runs,
            moves::a_fenced_move_destroys_the_old_copy_at_once,
            moves::a_move_breaking_a_rule_is_refused_and_stores_nothing,
            moves::one_move_per_incident_and_the_budget_holds,
            moves::fences_only_grow_and_states_written_again_keep_them,
            moves::decisions_show_in_their_incidents_timeline,
            node_states::node_states_are_stored_and_retired_is_final,
            node_states::allocation_skips_draining_retired_and_lost_nodes,
            evacuate::draining_moves_two_phase_and_a_lost_node_loses_its_move_instances_fenced,
            evacuate::a_retiring_node_is_revoked_once_empty_or_at_once_when_lost,
            stale::a_stale_copys_late_records_are_kept_counted_and_not_folded,
            backups::snapshots_are_stored_once_listed_in_order_and_forgotten,
            backups::blob_counters_count_puts_duplicates_and_refusals,
            backups::open_restores_give_their_key_to_their_target_only,
            backups::backup_records_are_listed_by_node,
            writers::everything_survives_reopening,
            writers::concurrent_stores_on_one_file_store_each_record_once,
            writers::concurrent_placements_never_overfill_a_node,
            restores::backup_policies_reach_the_signed_state_follow_moves_and_go_when_removed,
            restores::a_restore_moves_the_instance_with_its_directive_until_the_target_reports_it_restored,
            restores::a_restore_onto_a_node_that_does_not_fit_stores_nothing,
            restores::a_new_store_is_in_epoch_0,
        );
    };
    (@each $open:expr; $($group:ident::$test:ident,)*) => {
        $(
            #[test]
            fn $test() {
                let harness = $open;
                $crate::store::conformance::$group::$test(&harness);
            }
        )*
    };
}
pub(crate) use fleet_store_suite;

/// One fresh, empty store of a backend under test.
pub(crate) trait Harness: Sync {
    /// The backend under test.
    type Store: FleetStore;

    /// A new handle on the store, as another master process would open it (a handle
    /// dropped and opened again sees what was written).
    fn open(&self) -> Self::Store;
}

/// A valid name.
pub(crate) fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// A fresh store of the backend `hedge master` runs, in a temp dir (keep the dir alive
/// as long as the store): for the tests of the store's callers.
pub(crate) fn open() -> (tempfile::TempDir, MasterStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MasterStore::open(&dir.path().join("master.db")).unwrap();
    (dir, store)
}

pub(crate) fn state_rec(seq: u64, instance: &str, status: InstanceStatus, restarts: u32) -> Record {
    Record {
        seq,
        time_ms: 1000 + seq,
        kind: RecordKind::InstanceState {
            instance: n(instance),
            status,
            pid: (status == InstanceStatus::Running).then(|| 100 + u32::try_from(seq).unwrap()),
            restarts,
            last_exit: None,
        },
    }
}

pub(crate) fn usage_rec(seq: u64, instance: &str, from_ms: u64, to_ms: u64) -> Record {
    Record {
        seq,
        time_ms: to_ms,
        kind: RecordKind::Usage {
            instance: n(instance),
            from_ms,
            to_ms,
            cpu_ms: 1000,
            mem_avg_bytes: 1_000_000,
            mem_peak_bytes: 2_000_000,
            disk_bytes: 5_000,
            net_rx_bytes: None,
            net_tx_bytes: None,
            uptime_ms: to_ms - from_ms,
        },
    }
}

pub(crate) fn incident_rec(seq: u64, id: u64, state: IncidentState, severity: Severity) -> Record {
    Record {
        seq,
        time_ms: 2000 + seq,
        kind: RecordKind::Incident {
            id,
            instance: n("web"),
            promise: Some(n("http")),
            severity,
            state,
            first_seen_ms: 2000,
            last_seen_ms: 2000 + seq,
            message: format!("step {seq}"),
        },
    }
}

pub(crate) fn health_rec(seq: u64, mem_total: u64) -> Record {
    Record {
        seq,
        time_ms: 3000 + seq,
        kind: RecordKind::NodeHealth {
            load1_milli: 250,
            mem_total,
            mem_available: mem_total / 2,
            disk_free: 1 << 30,
            temp_milli_c: Some(45_000),
            uplink_up: true,
            outbox_depth: 3,
        },
    }
}

/// A master request for `/bin/sleep 1000` in `state`.
pub(crate) fn request(name: &str, state: RequestedState) -> InstanceRequest {
    InstanceRequest {
        name: n(name),
        software: SoftwareRelease::Exec("/bin/sleep".into()),
        args: vec!["1000".into()],
        parameters: BTreeMap::new(),
        config_files: Vec::new(),
        promises: Vec::new(),
        limits: Limits::default(),
        restart: RestartPolicy::default(),
        state,
    }
}

/// The epoch of the test batches that do not name one.
pub(crate) const E1: u64 = 0xe1;

pub(crate) fn up(node: &str, records: Vec<Record>, covers: Option<(u64, u64)>) -> Up {
    up_in(node, E1, records, covers)
}

pub(crate) fn up_in(
    node: &str,
    epoch: u64,
    records: Vec<Record>,
    covers: Option<(u64, u64)>,
) -> Up {
    Up {
        node: n(node),
        records,
        covers,
        epoch,
    }
}

pub(crate) fn batch(node: &str, from: u64, to: u64) -> Up {
    let records = (from..=to)
        .map(|s| state_rec(s, "web", InstanceStatus::Running, 0))
        .collect();
    up(node, records, Some((from, to)))
}
