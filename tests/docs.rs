//! The operator documentation names every failure kind, and the embedded
//! default configuration shown in README is the one the binary uses.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use stirscreen::verify::FailureKind;

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
