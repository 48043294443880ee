//! Many objects on one thread: the connection cache sized from the open-file limit, and
//! whole-object eviction (least recently used idle objects first) when it is full.

use std::time::Duration;

use crate::harness::{fixture, Server};

async fn construction(server: &Server, name: &str) -> u64 {
    let body = server.get_json_ok(&format!("/whoami/{name}"), &[]).await;
    body["construction"].as_u64().expect("construction number")
}

fn open_sqlite_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().contains(".sqlite"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_full_connection_cache_evicts_least_recently_used_objects_whole() {
    let data = crate::harness::scratch_dir("many-objects-lru");
    let data_arg = data.to_string_lossy().to_string();
    // 1080 files, less the reserve of 1024, leave room for 28 open objects (2 files each).
    let server = Server::start_with_open_file_limit(
        &fixture("objects").join("wrangler.toml"),
        &["--threads", "1", "--data-dir", &data_arg],
        1080,
    );
    assert!(
        server.wait_for_log("up to 28 open objects").await,
        "{}",
        server.logs()
    );
    for i in 0..40 {
        let value = server.get_json_ok(&format!("/increment/o{i}"), &[]).await;
        assert_eq!(value, 1, "o{i}");
    }
    // o0 was the least recently used: evicted whole, so it was constructed again, and its
    // data was committed before it went.
    assert!(construction(&server, "o0").await > 40, "{}", server.logs());
    assert_eq!(server.get_json_ok("/value/o0", &[]).await, 1);
    // A working set below the cap stays resident: no object is constructed twice.
    let mut first = Vec::new();
    for i in 0..8 {
        first.push(construction(&server, &format!("hot{i}")).await);
    }
    for _ in 0..3 {
        for (i, expected) in first.iter().enumerate() {
            assert_eq!(construction(&server, &format!("hot{i}")).await, *expected);
        }
    }
    let open = open_sqlite_files(server.pid());
    assert!(open <= 25 * 3 + 4, "{open} SQLite files open");
}

#[tokio::test]
async fn a_response_waits_for_the_flush_of_its_commit_and_the_thread_does_not() {
    let data = crate::harness::scratch_dir("flush-gate");
    let gate = data.join("flush-gate");
    let data_arg = data.join("data").to_string_lossy().to_string();
    let gate_env = gate.to_string_lossy().to_string();
    // Every flush waits until the gate file exists: commits are written, not durable.
    let server = Server::start_with_env(
        &fixture("objects").join("wrangler.toml"),
        &["--threads", "1", "--data-dir", &data_arg],
        &[("DORUN_TEST_FLUSH_GATE", &gate_env)],
    );
    let held = server.get("/increment/a");
    tokio::pin!(held);
    let early = tokio::time::timeout(Duration::from_secs(1), &mut held).await;
    assert!(
        early.is_err(),
        "a response was released before its commit was flushed"
    );
    // The isolate thread is not blocked by the pending flush: other objects on it answer.
    assert_eq!(server.get_json_ok("/value/b", &[]).await, 0);
    let other = construction(&server, "c").await;
    assert!(other > 0);
    assert!(tokio::time::timeout(Duration::from_millis(200), &mut held)
        .await
        .is_err());
    std::fs::write(&gate, "").unwrap();
    let reply = held.await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(reply.json(), 1);
    // Later commits are flushed as soon as they are written (the gate stays open).
    assert_eq!(server.get_json_ok("/increment/a", &[]).await, 2);
}

#[tokio::test]
async fn idle_connections_beyond_the_limit_close_and_their_objects_stay_resident() {
    let data = crate::harness::scratch_dir("many-objects-idle");
    let data_arg = data.to_string_lossy().to_string();
    let args = [
        "--threads",
        "1",
        "--data-dir",
        &data_arg,
        "--idle-connections",
        "4",
        "--object-idle-timeout",
        "60",
    ];
    let config = fixture("objects").join("wrangler.toml");
    let mut server = Server::start(&config, &args);
    assert!(
        server.wait_for_log("of them idle").await,
        "{}",
        server.logs()
    );
    let mut constructed = Vec::new();
    for i in 0..12 {
        assert_eq!(
            server.get_json_ok(&format!("/increment/i{i}"), &[]).await,
            1
        );
        constructed.push(construction(&server, &format!("i{i}")).await);
    }
    // Objects' database files open in the server (not their WALs, not the namespace's
    // alarm index or the cache).
    let object_files = |pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|entries| {
                entries
                    .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                    .filter(|target| {
                        target.starts_with(&data)
                            && target.extension().is_some_and(|e| e == "sqlite")
                            && !target.ends_with("metadata.sqlite")
                            && !target.ends_with("cache.sqlite")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let before = object_files(server.pid());
    assert!(
        before >= 12,
        "{before} object files open with 12 objects in use"
    );
    // Idle for a sweep interval (~1 s): all but 4 connections are closed, off the thread.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while object_files(server.pid()) > 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = object_files(server.pid());
    assert!(after <= 4, "{after} object files still open (was {before})");
    // The objects themselves stayed resident (not constructed again), and their storage
    // reopens with everything committed.
    for (i, first) in constructed.iter().enumerate() {
        assert_eq!(
            construction(&server, &format!("i{i}")).await,
            *first,
            "i{i}"
        );
        assert_eq!(
            server.get_json_ok(&format!("/increment/i{i}"), &[]).await,
            2
        );
    }
    // Nothing is lost to a kill -9 with connections closed, reopened and queued to close.
    server.kill9();
    let server = Server::start(&config, &args);
    for i in 0..12 {
        assert_eq!(
            server.get_json_ok(&format!("/value/i{i}"), &[]).await,
            2,
            "i{i}"
        );
    }
}
