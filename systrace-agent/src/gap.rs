//! The telemetry gap of a takeover. Between an agent's death (a crash, kill -9,
//! the watchdog) and the next agent's start, the pinned programs keep enforcing
//! and keep reporting into the dead agent's ring buffer, which nobody reads.
//! The next agent opens that ring buffer and its counters (pinned beside the
//! links), delivers what was reported before its own programs were attached,
//! and says in one status record what it could and could not account for.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use serde_json::{json, Value};
use systrace_common::{Counter, Event};

use crate::pins;

/// Longest wait for the old programs to leave their hooks before draining.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Records drained in all: programs that never left their hooks cannot keep
/// the drain going for ever.
const DRAIN_LIMIT: u64 = 1 << 20;

pub struct Previous {
    /// The pin directory's name: the previous agent's pid.
    pub name: String,
    ring: Option<RingBuf<MapData>>,
    counters: Option<PerCpuArray<MapData, u64>>,
    program_ids: Vec<u32>,
    taken_at: Instant,
    recovered: u64,
    overlap: u64,
    drained: u64,
}

impl Previous {
    /// Opens what the agent that pinned `dir` left; before `dir` is removed.
    pub fn open(dir: &Path) -> Previous {
        let ring =
            MapData::from_pin(dir.join(pins::EVENTS_PIN)).ok().and_then(|m| RingBuf::try_from(Map::RingBuf(m)).ok());
        let counters = MapData::from_pin(dir.join(pins::COUNTERS_PIN))
            .ok()
            .and_then(|m| PerCpuArray::try_from(Map::PerCpuArray(m)).ok());
        Previous {
            name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            ring,
            counters,
            program_ids: pins::program_ids(dir),
            taken_at: Instant::now(),
            recovered: 0,
            overlap: 0,
            drained: 0,
        }
    }

    /// Whether its programs are off their hooks (nothing more can arrive in
    /// its ring buffer), or waiting longer is pointless.
    pub fn settled(&self) -> bool {
        self.taken_at.elapsed() > SETTLE_LIMIT || pins::still_loaded(&self.program_ids).is_empty()
    }

    fn counter(&self, c: Counter) -> Option<u64> {
        Some(self.counters.as_ref()?.get(&(c as u32), 0).ok()?.iter().sum())
    }

    /// Hands `deliver` each event the previous programs reported that no agent
    /// read, and returns the status record. Those after `cutoff_ns` (when this
    /// agent's programs began attaching) happened while both agents' programs
    /// were on the hooks: the older ones run first, and a denial by one of them
    /// skips the rest, so this agent's programs did not report it and it is
    /// delivered too (an audit both report would arrive twice; counted as
    /// `during_overlap`).
    ///
    /// Drains at most `batch` records per call, so the sinks' queues empty in
    /// between; the record comes once the ring buffer is empty.
    pub fn drain(&mut self, cutoff_ns: u64, batch: usize, mut deliver: impl FnMut(&Event)) -> Option<Value> {
        let Some(ring) = self.ring.as_mut() else {
            return Some(json!({
                "type": "status",
                "state": "telemetry-gap",
                "time": crate::events::now_rfc3339(),
                "previous_agent": self.name,
                "known": false,
                "why": "the previous agent pinned no event ring buffer (an older version)",
            }));
        };
        let mut empty = false;
        for _ in 0..batch {
            if self.drained >= DRAIN_LIMIT {
                break;
            }
            let Some(record) = ring.next() else {
                empty = true;
                break;
            };
            self.drained += 1;
            let Some(event) = crate::events::decode(&record) else { continue };
            drop(record);
            // Binding records are not events the counters count.
            let counted = u64::from(event.hook != systrace_common::source::CGROUP_BOUND);
            deliver(&event);
            if event.boot_ns < cutoff_ns {
                self.recovered += counted;
            } else {
                self.overlap += counted;
            }
        }
        // A full batch: there may be more; the next call goes on.
        if !empty && self.drained < DRAIN_LIMIT {
            return None;
        }
        Some(self.record(true))
    }

    /// The record for a drain this agent could not finish (it is stopping):
    /// what is left in the ring buffer goes with it, and says so.
    pub fn abandon(&self) -> Value {
        self.record(false)
    }

    fn record(&self, complete: bool) -> Value {
        let (recovered, overlap) = (self.recovered, self.overlap);
        let produced = self.counter(Counter::Reported).unwrap_or(0);
        let lost = self.counter(Counter::RingFull).unwrap_or(0) + self.counter(Counter::ScratchBusy).unwrap_or(0);
        // Learn mode reports each distinct access once; repeats are counted, not written.
        let repeats = self.counter(Counter::LearnRepeats).unwrap_or(0);
        let read = self.counter(Counter::AgentRead).unwrap_or(0);
        // Read by the previous agent after it last said how many it had read
        // (it says so after each batch), or read and not yet written anywhere.
        let unaccounted = produced.saturating_sub(lost + repeats + read + recovered + overlap);
        json!({
            "type": "status",
            "state": "telemetry-gap",
            "time": crate::events::now_rfc3339(),
            "previous_agent": self.name,
            "known": true,
            "complete": complete,
            "produced": produced,
            "read_by_previous_agent": read,
            "recovered": recovered + overlap,
            "during_overlap": overlap,
            "lost_in_kernel": lost,
            "learn_repeats": repeats,
            "unaccounted": unaccounted,
            "settled_after_ms": self.taken_at.elapsed().as_millis() as u64,
            // Non-zero when the wait for them ran out: events they report
            // from now on are lost (this agent's programs report them too).
            "programs_still_loaded": pins::still_loaded(&self.program_ids),
        })
    }
}
