//! The chaos run (issue 12, item 16), short: about 15 s of seeded chaos under load, then the end
//! checks. `CHAOS_SEED=N` replays the same choices; the longer run is `make bench-chaos`.

use reloadsup_integration_tests::chaos::{self, ChaosConfig};
use reloadsup_integration_tests::Sandbox;

#[test]
fn chaos_run_under_load_fails_only_requests_of_killed_workers() {
    let sandbox = Sandbox::new("chaos");
    let report = chaos::run(&sandbox, &ChaosConfig::test(chaos::seed_from_env()));
    eprintln!("{}", report.summary());
    assert!(
        report.holds(),
        "the chaos run broke a rule:\n{}",
        report.summary()
    );
    assert!(
        report.requests_ok > 0 && !report.actions.is_empty(),
        "the chaos run did nothing:\n{}",
        report.summary()
    );
}
