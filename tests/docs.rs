//! The operator documentation names every failure kind, and the embedded
//! default configuration shown in README is the one the binary uses.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use stirscreen::stir::verify::FailureKind;

#[test]
fn readme_lists_every_failure_kind() {
    let readme = include_str!("../README.md");
    for k in FailureKind::ALL {
        assert!(
            readme.contains(&format!("`{}`", k.name())),
            "README lacks `{}`",
            k.name()
        );
    }
}

#[test]
fn readme_configuration_keys_exist() {
    // Every `key =` line of the README's annotated [verify]/[fetch]/[proxy]
    // example must parse as configuration.
    let readme = include_str!("../README.md");
    let start = readme.find("```toml\n[verify]").unwrap() + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    stirscreen::config::Config::parse(&readme[start..end], "README.md").unwrap();
}

#[test]
fn deploy_config_parses_and_the_unit_runs_serve_with_it() {
    let text = include_str!("../deploy/stirscreen.toml");
    let c = stirscreen::config::Config::parse(text, "deploy/stirscreen.toml").unwrap();
    assert_eq!(c.log.format, stirscreen::config::LogFormat::Json);
    let unit = include_str!("../deploy/stirscreen.service");
    assert!(
        unit.contains(
            "ExecStart=/usr/local/bin/stirscreen serve --config /etc/stirscreen/stirscreen.toml"
        ),
        "{unit}"
    );
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // The drain must fit in the unit's stop timeout.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(c.proxy.drain_ms < stop * 1000);
}
