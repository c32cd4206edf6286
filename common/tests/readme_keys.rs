//! The README's key table (`| key | flag | env | default | reload |
//! meaning |`) says what `common::config::keys::TABLE` says: the same keys
//! in the same order, with the same flag, environment variable, default and
//! reload behaviour. A key added to one and not the other fails here.

use common::config::keys::{Key, TABLE};

/// The README of the workspace, next to this crate.
const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

/// The first line of the key table.
const HEADER: &str = "| key | flag | env | default | reload | meaning |";

/// One row of the README's table, split into its cells.
#[derive(Debug)]
struct Row<'a> {
    key: &'a str,
    flag: &'a str,
    env: &'a str,
    default: &'a str,
    reload: &'a str,
}

/// The rows of the key table, after its header and separator lines.
fn readme_rows() -> Vec<Row<'static>> {
    let mut lines = README.lines().skip_while(|line| line.trim() != HEADER);
    assert_eq!(lines.next().map(str::trim), Some(HEADER), "no key table");
    assert!(
        lines.next().is_some_and(|line| line.starts_with("|---")),
        "separator line"
    );
    lines
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            // No cell of this table holds a `|` of its own.
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            assert!(cells.len() >= 6, "six cells in {line:?}");
            Row {
                key: cells[0],
                flag: cells[1],
                env: cells[2],
                default: cells[3],
                reload: cells[4],
            }
        })
        .collect()
}

/// `` `--pods a,b` `` → `--pods`: the flag, without its example value.
fn first_word(cell: &str) -> &str {
    cell.trim_matches('`')
        .split([' ', '='])
        .next()
        .unwrap_or("")
}

/// What the README's flag cell must say for `key`.
fn flag_cell(key: &Key) -> String {
    match (key.flag, key.env) {
        (Some(flag), _) => format!("--{}", flag.long),
        (None, Some(_)) => "(file or env)".to_owned(),
        (None, None) => "(file only)".to_owned(),
    }
}

#[test]
fn readme_key_table_matches_the_code_table() {
    let rows = readme_rows();
    let readme_keys: Vec<&str> = rows.iter().map(|row| row.key.trim_matches('`')).collect();
    let code_keys: Vec<&str> = TABLE.iter().map(|key| key.name).collect();
    assert_eq!(readme_keys, code_keys, "same keys in the same order");
    for (row, key) in rows.iter().zip(TABLE) {
        let flag = if row.flag.starts_with('`') {
            first_word(row.flag)
        } else {
            row.flag
        };
        assert_eq!(flag, flag_cell(key), "flag of {}", key.name);
        let env = (!row.env.is_empty()).then(|| first_word(row.env));
        assert_eq!(env, key.env, "env of {}", key.name);
        assert_eq!(
            row.default,
            key.default.in_readme(),
            "default of {}",
            key.name
        );
        assert_eq!(row.reload, key.reload.in_readme(), "reload of {}", key.name);
    }
}

#[test]
fn readme_flag_examples_name_the_flag_value() {
    // `--tls-verify BOOL`: where the README shows a value, it is the one
    // `--help` shows, or an example of it.
    for (row, key) in readme_rows().iter().zip(TABLE) {
        let Some(flag) = key.flag else { continue };
        let shown = row.flag.trim_matches('`');
        if let Some((_, value)) = shown.split_once(' ') {
            let example = value.contains(',');
            assert!(
                value == flag.value_name || example,
                "{}: README shows {value:?}, --help {}",
                key.name,
                flag.value_name
            );
        }
    }
}
