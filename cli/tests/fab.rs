//! `flwr build` makes the FAB that Flower 1.42's `flwr build` makes for the same directory: the
//! fixture was built once by Flower (`flwr build --app cli/tests/fixtures/fabapp`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

const FLOWER_FAB: &str = "flower-rs.fabapp.1-2-0.bb5cf688.fab";

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

#[test]
fn the_fab_is_byte_for_byte_flowers() {
    let fab = cli::fab::build(&fixtures().join("fabapp")).unwrap();
    let flower = std::fs::read(fixtures().join(FLOWER_FAB)).unwrap();
    if fab.fab.archive != flower {
        // Say where they part, not just that they do.
        let at = fab
            .fab
            .archive
            .iter()
            .zip(&flower)
            .position(|(a, b)| a != b)
            .unwrap_or(fab.fab.archive.len().min(flower.len()));
        let context = |bytes: &[u8]| {
            String::from_utf8_lossy(&bytes[at.saturating_sub(40)..(at + 40).min(bytes.len())])
                .into_owned()
        };
        panic!(
            "FABs differ at byte {at} (ours {} bytes, Flower's {}):\nours:    {:?}\nFlower's: {:?}",
            fab.fab.archive.len(),
            flower.len(),
            context(&fab.fab.archive),
            context(&flower)
        );
    }
    assert_eq!(fab.file_name, FLOWER_FAB);
    assert_eq!(fab.fab.fab_id, "flower-rs/fabapp");
    assert_eq!(fab.fab.version, "1.2.0");
}

#[test]
fn a_directory_that_is_no_flower_app_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("myapp");
    std::fs::create_dir(&app).unwrap();
    let error = cli::fab::build(&app).unwrap_err().to_string();
    assert!(error.contains("pyproject.toml not found"), "{error}");
    std::fs::write(app.join("pyproject.toml"), "[project]\nname = \"myapp\"\n").unwrap();
    let error = cli::fab::build(&app).unwrap_err().to_string();
    assert!(
        error.contains("\"version\" missing in [project]"),
        "{error}"
    );
    let bad = dir.path().join("1app");
    std::fs::create_dir(&bad).unwrap();
    let error = cli::fab::build(&bad).unwrap_err().to_string();
    assert!(error.contains("directory name"), "{error}");

    // A publisher that would put the FAB elsewhere than the current directory.
    let sneaky = dir.path().join("sneaky");
    std::fs::create_dir_all(sneaky.join("sneaky")).unwrap();
    std::fs::write(
        sneaky.join("pyproject.toml"),
        "[project]\nname = \"sneaky\"\nversion = \"1.0.0\"\n[tool.flwr.app]\npublisher = \"../../tmp/x\"\n\
         [tool.flwr.app.components]\nserverapp = \"sneaky.s:app\"\nclientapp = \"sneaky.c:app\"\n",
    )
    .unwrap();
    let error = cli::fab::build(&sneaky).unwrap_err().to_string();
    assert!(error.contains("cannot be part of a file name"), "{error}");
}

#[test]
fn the_echo_app_builds_to_the_fab_flower_built_for_it() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../flower-runtime/tests/fixtures"
    ));
    let fab = cli::fab::build(&dir.join("echo-app")).unwrap();
    let flower = std::fs::read(dir.join("echo-app.fab")).unwrap();
    assert!(
        fab.fab.archive == flower,
        "the echo app's FAB is not Flower's"
    );
}
