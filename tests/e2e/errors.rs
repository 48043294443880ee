//! Bad code stops startup with file:line:column and a non-zero exit, never a panic.

use crate::harness::{fixture, run_dorun, Server};

fn check(fixture_dir: &str) -> (bool, String) {
    let config = fixture(fixture_dir).join("wrangler.toml");
    let (ok, stdout, stderr) = run_dorun(&["check", config.to_str().unwrap()], None);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (ok, format!("{stdout}{stderr}"))
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let (ok, output) = check("errors/syntax");
    assert!(!ok, "{output}");
    assert!(output.contains("broken.js:4:"), "{output}");
    assert!(output.contains("SyntaxError"), "{output}");
}

#[test]
fn missing_package_names_specifier_and_importing_line() {
    let (ok, output) = check("errors/missing-import");
    assert!(!ok, "{output}");
    assert!(output.contains("\"no-such-package\""), "{output}");
    assert!(output.contains("missing-import/index.js:2:"), "{output}");
}

#[test]
fn missing_relative_file_names_specifier_and_importing_line() {
    let (ok, output) = check("errors/missing-relative");
    assert!(!ok, "{output}");
    assert!(output.contains("./not-here.js"), "{output}");
    assert!(output.contains("missing-relative/index.js:2:"), "{output}");
}

#[test]
fn serve_refuses_to_start_on_a_syntax_error() {
    let config = fixture("errors/syntax").join("wrangler.toml");
    let error = match Server::try_start(&config, &[]) {
        Ok(_) => panic!("server started despite a syntax error"),
        Err(error) => error,
    };
    assert!(error.contains("broken.js:4:"), "{error}");
}

#[test]
fn a_module_that_throws_while_loading_stops_check_and_serve() {
    let (ok, output) = check("errors/top-level-throw");
    assert!(!ok, "check passed a module that throws at load: {output}");
    assert!(
        output.contains("RangeError: thrown while the module loads"),
        "{output}"
    );
    assert!(output.contains("top-level-throw/helper.js:4:"), "{output}");
    let config = fixture("errors/top-level-throw").join("wrangler.toml");
    let error = match Server::try_start(&config, &[]) {
        Ok(_) => panic!("server started although its module threw"),
        Err(error) => error,
    };
    assert!(error.contains("thrown while the module loads"), "{error}");
}

#[test]
fn check_passes_on_good_code() {
    let config = fixture("module-rules").join("wrangler.toml");
    let (ok, stdout, stderr) = run_dorun(&["check", config.to_str().unwrap()], None);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("ok: module-rules"), "{stdout}");
}
