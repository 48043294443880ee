//! Unit tests of the gates (js/07_gates.js), run in a bare V8 isolate with only that file.

use deno_core::{JsRuntime, PollEventLoopOptions, RuntimeOptions};

deno_core::extension!(
    dorun_gates_test,
    esm_entry_point = "ext:dorun_gates_test/tests/gates_test.js",
    esm = [dir "src/js", "07_gates.js", "tests/gates_test.js"],
);

#[tokio::test(flavor = "current_thread")]
async fn input_and_output_gates_keep_their_contract() {
    let mut runtime = JsRuntime::new(RuntimeOptions {
        extensions: vec![dorun_gates_test::init()],
        ..Default::default()
    });
    let promise = runtime
        .execute_script("gates", "globalThis.gateTests()")
        .unwrap();
    let resolved = runtime.resolve(promise);
    let value = runtime
        .with_event_loop_promise(resolved, PollEventLoopOptions::default())
        .await
        .unwrap();
    let json = {
        deno_core::scope!(scope, &mut runtime);
        let local = deno_core::v8::Local::new(scope, value);
        local.to_rust_string_lossy(scope)
    };
    let results: Vec<(String, bool, String)> = serde_json::from_str(&json).unwrap();
    assert_eq!(results.len(), 19, "{results:?}");
    let failed: Vec<_> = results.iter().filter(|(_, passed, _)| !passed).collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
}
