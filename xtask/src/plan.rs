//! Which VM boots a test run makes, in which order, and which of them fit its
//! time budget.
//!
//! Most of a boot's time is the agent starting (verifying about 50 programs,
//! about a minute each time on 6.1 under emulation), and four kernels times
//! eight scenarios do not fit CI's limit on two emulating cores. So the boots
//! run in the order of what they prove, and a boot that would end past the
//! budget is skipped and reported as skipped (never as passed):
//!
//! 1. the foundation suite and the bypass table (with self-protection) on the
//!    oldest and the newest kernel, then on the kernels between them: this is
//!    where everything the agent reads from a kernel's BTF is exercised;
//! 2. the living system on the oldest;
//! 3. the refusal check on the oldest and the newest, the policy language,
//!    the Debian system with systemd and policy generation on the oldest
//!    (user space, the same on every kernel: one kernel first);
//! 4. the living system on the newest, then the user-space scenarios there;
//! 5. the living system on the kernels between;
//! 6. the second systemd boot (`again`) on the oldest and the newest.
//!
//! The oldest and the newest kernel have every scenario in the plan, the
//! kernels between the core set (suite, bypass, living); a scenario named
//! with `--scenario` runs on every kernel.
//! With `--budget 0` every boot runs.

use std::time::Duration;

/// Which kernels of the matrix a step boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernels {
    /// The oldest (by release).
    Oldest,
    /// The newest (by release).
    Newest,
    /// The others.
    Between,
}

use Kernels::{Between, Newest, Oldest};

/// The order of the steps (see the module's documentation).
const ORDER: [(&str, Kernels); 24] = [
    ("suite", Oldest),
    ("suite", Newest),
    ("bypass", Oldest),
    ("bypass", Newest),
    ("suite", Between),
    ("bypass", Between),
    ("living", Oldest),
    ("refusal", Oldest),
    ("refusal", Newest),
    ("lang", Oldest),
    ("systemd", Oldest),
    ("learning", Oldest),
    ("living", Newest),
    ("lang", Newest),
    ("systemd", Newest),
    ("learning", Newest),
    ("living", Between),
    ("again", Oldest),
    ("again", Newest),
    // Asked for by name (`--scenario`) on a kernel between, these run too.
    ("lang", Between),
    ("learning", Between),
    ("refusal", Between),
    ("systemd", Between),
    ("again", Between),
];

/// What each scenario takes on 6.1, the slowest kernel, on two emulating
/// cores, in seconds, initramfs included: suite, bypass, living and lang as
/// measured on 2026-12-07; refusal, systemd, learning and again from that
/// day's partial runs and earlier notes (learning has taken up to 30
/// minutes). Later guesses are scaled by how this run's boots compared.
pub fn estimate(scenario: &str) -> Duration {
    Duration::from_secs(match scenario {
        "suite" => 90,
        "bypass" => 380,
        "living" => 820,
        "refusal" => 40,
        "lang" => 430,
        "systemd" => 600,
        "learning" => 1800,
        "again" => 300,
        _ => 600,
    })
}

/// The boots of a run, in order: (kernel index, scenario). `oldest` and
/// `newest` index `kernels` (the same index when there is one kernel);
/// `only` keeps one scenario (`systemd` keeps `again` too), run on every
/// kernel.
pub fn boots(kernels: usize, oldest: usize, newest: usize, only: Option<&str>) -> Vec<(usize, &'static str)> {
    let between: Vec<usize> = (0..kernels).filter(|&k| k != oldest && k != newest).collect();
    let mut out = Vec::new();
    for (scenario, which) in ORDER {
        let name = if scenario == "again" { "systemd" } else { scenario };
        if only.is_some_and(|o| o != name) {
            continue;
        }
        // Past the core set, a kernel between runs a scenario only when it
        // was asked for by name.
        let core = matches!(scenario, "suite" | "bypass" | "living");
        if which == Between && !core && only.is_none() {
            continue;
        }
        let list = match which {
            Oldest => vec![oldest],
            Newest => vec![newest],
            Between => between.clone(),
        };
        for k in list {
            if !out.contains(&(k, scenario)) {
                out.push((k, scenario));
            }
        }
    }
    out
}

/// Keeps time against the budget.
pub struct Budget {
    /// `None`: no budget, every boot runs.
    limit: Option<Duration>,
    /// Sum of the actual and the estimated time of the boots timed so far.
    actual: Duration,
    estimated: Duration,
}

impl Budget {
    pub fn new(limit: Option<Duration>) -> Budget {
        Budget { limit, actual: Duration::ZERO, estimated: Duration::ZERO }
    }

    /// How much slower than the estimates this run's boots are, from those
    /// timed so far; never below 1: the estimates are the slowest kernel's,
    /// and faster kernels early in a run must not make a later boot of the
    /// slowest look cheaper than it is.
    fn pace(&self) -> f64 {
        if self.estimated.is_zero() {
            1.0
        } else {
            (self.actual.as_secs_f64() / self.estimated.as_secs_f64()).max(1.0)
        }
    }

    /// The expected time of a boot of `scenario` at this run's pace.
    pub fn expect(&self, scenario: &str) -> Duration {
        estimate(scenario).mul_f64(self.pace())
    }

    /// Whether a boot of `scenario` started `elapsed` into the run is
    /// expected to end within the budget.
    pub fn fits(&self, elapsed: Duration, scenario: &str) -> bool {
        self.limit.is_none_or(|limit| elapsed + self.expect(scenario) <= limit)
    }

    /// Records how long a boot of `scenario` took.
    pub fn record(&mut self, scenario: &str, took: Duration) {
        self.actual += took;
        self.estimated += estimate(scenario);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_set_runs_everywhere_first_and_the_rest_on_the_ends() {
        // Kernels 0 (oldest) .. 3, with 3 the newest.
        let plan = boots(4, 0, 3, None);
        assert_eq!(&plan[..4], &[(0, "suite"), (3, "suite"), (0, "bypass"), (3, "bypass")]);
        assert_eq!(plan[8], (0, "living"));
        assert_eq!(&plan[4..8], &[(1, "suite"), (2, "suite"), (1, "bypass"), (2, "bypass")]);
        for k in [1, 2] {
            assert!(plan.contains(&(k, "living")));
            assert!(!plan.iter().any(|&(kk, s)| kk == k && !matches!(s, "suite" | "bypass" | "living")));
        }
        for k in [0, 3] {
            for s in ["suite", "bypass", "living", "refusal", "lang", "systemd", "learning", "again"] {
                assert_eq!(plan.iter().filter(|&&b| b == (k, s)).count(), 1, "{k} {s}");
            }
        }
        assert_eq!(plan.len(), 2 * 8 + 2 * 3);
    }

    #[test]
    fn one_kernel_runs_everything_and_a_named_scenario_runs_on_every_kernel() {
        assert_eq!(boots(1, 0, 0, None).len(), 8);
        assert_eq!(
            boots(4, 0, 3, Some("learning")),
            vec![(0, "learning"), (3, "learning"), (1, "learning"), (2, "learning")]
        );
        assert_eq!(boots(2, 0, 1, Some("systemd")), vec![(0, "systemd"), (1, "systemd"), (0, "again"), (1, "again")]);
        assert_eq!(
            boots(3, 0, 2, Some("systemd")),
            vec![(0, "systemd"), (2, "systemd"), (0, "again"), (2, "again"), (1, "systemd"), (1, "again")]
        );
    }

    #[test]
    fn the_budget_skips_what_would_end_past_it_at_this_runs_pace() {
        let mut b = Budget::new(Some(Duration::from_secs(1000)));
        assert!(b.fits(Duration::from_secs(500), "bypass"));
        assert!(!b.fits(Duration::from_secs(700), "bypass"));
        // This run is twice as slow as the estimates.
        b.record("suite", Duration::from_secs(180));
        assert_eq!(b.expect("bypass"), Duration::from_secs(760));
        assert!(!b.fits(Duration::from_secs(500), "bypass"));
        assert!(b.fits(Duration::from_secs(500), "refusal"));
        // A faster run never makes the estimates cheaper.
        let mut fast = Budget::new(Some(Duration::from_secs(1000)));
        fast.record("suite", Duration::from_secs(45));
        assert_eq!(fast.expect("bypass"), estimate("bypass"));
        assert!(Budget::new(None).fits(Duration::from_secs(1 << 30), "learning"));
    }
}
