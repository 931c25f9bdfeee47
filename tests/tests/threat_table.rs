//! `docs/architecture.md`'s threats table stays true: it lists all 48 cases, and every test it
//! names exists under that name in that file (a renamed or deleted test fails here).

use std::path::Path;

#[test]
fn the_threat_table_names_only_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = fs_err::read_to_string(root.join("docs/architecture.md")).unwrap();
    let section = doc
        .split("## Threats and where they are handled")
        .nth(1)
        .expect("the threats section")
        .split("\n## ")
        .next()
        .unwrap();
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| T")).collect();
    let cases: Vec<String> = rows.iter().map(|r| r[2..5].to_owned()).collect();
    let expected: Vec<String> = (1..=48).map(|n| format!("T{n:02}")).collect();
    assert_eq!(cases, expected, "every case once, in order");

    let mut named = 0;
    for row in &rows {
        let columns: Vec<&str> = row.split(" | ").collect();
        let tests = columns[2];
        for quoted in tests.split('`').skip(1).step_by(2) {
            let Some((file, name)) = quoted.split_once("::") else {
                continue;
            };
            let path = root.join("tests/tests").join(format!("{file}.rs"));
            let source = fs_err::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{row}\nnames {file}.rs: {e}"));
            assert!(
                source.contains(&format!("fn {name}(")),
                "{}: {file}.rs has no test {name}",
                &row[2..5]
            );
            named += 1;
        }
        let status = columns.last().unwrap();
        assert!(
            ["covered", "partly", "not yet"]
                .iter()
                .any(|s| status.starts_with(s)),
            "{row}: status must say covered, partly or not yet"
        );
    }
    assert!(named >= 40, "only {named} tests named");
}
