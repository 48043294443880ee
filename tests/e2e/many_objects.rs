//! Many objects on one thread: the connection cache sized from the open-file limit, and
//! whole-object eviction (least recently used idle objects first) when it is full.

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
    // 1100 files, less the reserve of 1024, leave room for 25 open objects (3 files each).
    let server = Server::start_with_open_file_limit(
        &fixture("objects").join("wrangler.toml"),
        &["--threads", "1", "--data-dir", &data_arg],
        1100,
    );
    assert!(
        server.wait_for_log("up to 25 open objects").await,
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
