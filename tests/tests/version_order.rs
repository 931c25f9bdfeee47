//! aptgate's version ordering (`aptgate_channels::index::compare_versions`, dpkg's algorithm
//! written out) must be dpkg's: promotion rules, diffs and "newest version" decisions are made
//! with it, and apt will disagree with any other order. `debversion`'s is checked too: it
//! differs from dpkg where a version part ends in a non-digit (pinned below), and
//! `debian-packaging` 0.18's does not match dpkg for `+deb12u1` against `~bpo12+1`. Each case
//! spawns dpkg three times, so the case count stays small.

use std::{cmp::Ordering, process::Command};

use aptgate_channels::index::compare_versions;
use debversion::Version;
use proptest::prelude::*;

/// What `dpkg --compare-versions` says, asking `lt`, `eq` and `gt` separately: exactly one
/// must hold.
fn dpkg_order(a: &str, b: &str) -> Ordering {
    let holds = |op| {
        let status = Command::new("dpkg")
            .args(["--compare-versions", a, op, b])
            .status()
            .expect("running dpkg");
        // 0 and 1 are answers; anything else means dpkg rejected a version.
        assert!(
            matches!(status.code(), Some(0 | 1)),
            "dpkg {a} {op} {b}: {status}"
        );
        status.success()
    };
    let answers = [
        (Ordering::Less, holds("lt")),
        (Ordering::Equal, holds("eq")),
        (Ordering::Greater, holds("gt")),
    ];
    let held: Vec<_> = answers
        .iter()
        .filter(|(_, h)| *h)
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(held.len(), 1, "dpkg: {a} vs {b}: {answers:?}");
    held[0]
}

fn debversion_order(a: &str, b: &str) -> Ordering {
    let parse = |v: &str| {
        v.parse::<Version>()
            .unwrap_or_else(|e| panic!("debversion rejects {v:?}: {e}"))
    };
    parse(a).cmp(&parse(b))
}

/// Versions in the shapes Debian uses: optional epoch, an upstream part starting with a digit,
/// an optional revision (stable updates, backports, release candidates, binNMUs).
fn version() -> impl Strategy<Value = String> {
    let epoch = prop_oneof![
        3 => Just(String::new()),
        1 => (0u8..3).prop_map(|e| format!("{e}:")),
    ];
    let upstream = prop_oneof![
        prop::sample::select(vec![
            "1.0", "1.0.0", "1.00", "1.0a", "1.0~rc1", "1.0~~", "1.0+dfsg", "1.0-beta", "2.12.1",
        ])
        .prop_map(String::from),
        "[0-9][0-9a-zA-Z.+~]{0,6}",
    ];
    let revision = prop_oneof![
        Just(None),
        prop::sample::select(vec![
            "1",
            "2",
            "1.1",
            "0~rc1",
            "1+deb12u1",
            "1~bpo12+1",
            "1+b1"
        ])
        .prop_map(|r| Some(r.to_owned())),
        "[0-9a-zA-Z+.~]{1,5}".prop_map(Some),
    ];
    (epoch, upstream, revision).prop_map(|(epoch, upstream, revision)| {
        // An upstream part may contain `-` only when a revision follows.
        let revision = revision.or_else(|| upstream.contains('-').then(|| "1".into()));
        match revision {
            Some(revision) => format!("{epoch}{upstream}-{revision}"),
            None => format!("{epoch}{upstream}"),
        }
    })
}

/// Unrelated pairs are mostly far apart, so also compare a version with itself and with
/// small suffixes of itself, where orderings are subtle.
fn pair() -> impl Strategy<Value = (String, String)> {
    let suffix = prop::sample::select(vec![
        "~", "+", ".0", "0", "a", "~rc1", "+deb12u1", "~bpo12+1",
    ]);
    prop_oneof![
        (version(), version()),
        version().prop_map(|v| (v.clone(), v)),
        (version(), suffix).prop_map(|(v, s)| {
            let w = format!("{v}{s}");
            (v, w)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn aptgate_orders_like_dpkg((a, b) in pair()) {
        prop_assert_eq!(compare_versions(&a, &b), dpkg_order(&a, &b), "{} vs {}", a, b);
    }

    #[test]
    fn debversion_orders_like_dpkg((a, b) in pair()) {
        let dpkg = dpkg_order(&a, &b);
        if debversion_order(&a, &b) != dpkg {
            // Only the known divergence is tolerated: spelling the missing 0 out must fix it.
            let (a0, b0) = (zero_padded(&a), zero_padded(&b));
            prop_assert_eq!(debversion_order(&a0, &b0), dpkg, "{} vs {}", a, b);
        }
    }
}

/// Appends `0` to the upstream part and revision where they end in a non-digit: dpkg orders
/// the result exactly as the original, and `debversion` no longer meets an empty number.
fn zero_padded(version: &str) -> String {
    let pad = |part: &str| {
        if part.ends_with(|c: char| c.is_ascii_digit()) {
            part.to_owned()
        } else {
            format!("{part}0")
        }
    };
    match version.rsplit_once('-') {
        Some((upstream, revision)) => format!("{}-{}", pad(upstream), pad(revision)),
        None => pad(version),
    }
}

/// Fails once `debversion` is fixed: then drop the tolerance in the property test.
#[test]
fn debversion_divergence_on_trailing_zero() {
    for (a, b) in [
        ("1.0a", "1.0a0"),
        ("1.0+dfsg-1", "1.0+dfsg0-1"),
        ("1.-1", "1.0~-1"),
    ] {
        assert_ne!(debversion_order(a, b), dpkg_order(a, b), "{a} vs {b}");
        assert_eq!(
            compare_versions(a, b),
            dpkg_order(a, b),
            "aptgate: {a} vs {b}"
        );
        assert_eq!(
            debversion_order(&zero_padded(a), &zero_padded(b)),
            dpkg_order(a, b),
            "{a} vs {b}"
        );
    }
}

#[test]
fn known_cases_order_like_dpkg() {
    for (a, b, expected) in [
        // A stable update outranks the backport of the same version.
        ("1.0-1+deb12u1", "1.0-1~bpo12+1", Ordering::Greater),
        ("1.0~rc1-1", "1.0-1", Ordering::Less),
        ("1:0.9-1", "2.0-1", Ordering::Greater),
        ("0:1.0-1", "1.0-1", Ordering::Equal),
        ("1.0", "1.0-0", Ordering::Equal),
        ("1.0-1", "1.0-1+b1", Ordering::Less),
        ("2.10-3", "2.12.1-1", Ordering::Less),
    ] {
        assert_eq!(dpkg_order(a, b), expected, "dpkg: {a} vs {b}");
        assert_eq!(debversion_order(a, b), expected, "debversion: {a} vs {b}");
        assert_eq!(compare_versions(a, b), expected, "aptgate: {a} vs {b}");
    }
}
