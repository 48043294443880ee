//! What can be checked of config/Dockerfile without a Docker engine: the binary in the
//! final stage's layout (/usr/local/bin/dorun, the app in /app, data in /data) started with
//! the image's ENTRYPOINT + CMD as its non-root user, answering requests; the HEALTHCHECK
//! command against it; SIGTERM ends it with status 0; and the binary links only libraries
//! of Debian's libc6 and libgcc-s1, which the slim base image has.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{dorun_binary, fixture, scratch_dir};

fn dockerfile() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/Dockerfile");
    std::fs::read_to_string(path).unwrap()
}

/// The JSON array after `prefix` on the last line that starts with it.
fn exec_form(text: &str, prefix: &str) -> Vec<String> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line"));
    let array = &line[line.find('[').expect("exec form")..];
    serde_json::from_str(array).expect("a JSON array")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Runs `program args` as the image's user when root (setpriv), else as ourselves.
fn as_image_user(program: &Path, args: &[String]) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root && Path::new("/usr/bin/setpriv").exists() {
        let mut command = Command::new("/usr/bin/setpriv");
        command
            .args(["--reuid", "10001", "--regid", "10001", "--clear-groups"])
            .arg(program)
            .args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

#[test]
fn the_final_stage_layout_serves_and_passes_its_health_check() {
    let text = dockerfile();
    assert!(text.contains("\nUSER dorun\n") && text.contains("\nVOLUME /data\n"));
    let entrypoint = exec_form(&text, "ENTRYPOINT");
    let cmd = exec_form(&text, "CMD");
    let health = exec_form(&text, "HEALTHCHECK");
    assert_eq!(entrypoint, ["dorun"]);

    let root = scratch_dir("container");
    let bin = root.join("usr/local/bin/dorun");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(dorun_binary(), &bin).unwrap();
    let (app, data) = (root.join("app"), root.join("data"));
    copy_dir(&fixture("admin"), &app);
    std::fs::create_dir_all(&data).unwrap();
    let _ = Command::new("chown")
        .args(["-R", "10001:10001"])
        .arg(&data)
        .status();
    // The image's CMD, with the container's paths and fixed ports mapped to this machine.
    let args: Vec<String> = cmd
        .iter()
        .map(|arg| match arg.as_str() {
            "/app" => app.display().to_string(),
            "/data" => data.display().to_string(),
            "8787" | "9000" => "0".to_string(),
            other => other.to_string(),
        })
        .chain(["--exit-after".to_string(), "60".to_string()])
        .collect();
    let mut child = as_image_user(&bin, &args)
        .current_dir(&app)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (mut base, mut admin) = (None, None);
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        if let Some(url) = line.strip_prefix("dorun: listening on ") {
            base = Some(url.to_string());
        }
        if let Some(url) = line.strip_prefix("dorun: admin on ") {
            admin = Some(url.to_string());
        }
        if base.is_some() && admin.is_some() {
            break;
        }
    }
    let (Some(base), Some(admin)) = (base, admin) else {
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        panic!(
            "the image's CMD did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let curl = |url: &str| {
        let output = Command::new("curl")
            .args(["-s", "-m", "20", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(curl(&format!("{base}/o/c/put?key=x&value=3")).contains("\"id\""));
    assert_eq!(curl(&format!("{base}/o/c/get?key=x")), r#"{"value":3}"#);
    assert!(std::fs::read_dir(data.join("admin-Store")).unwrap().count() > 0);

    // HEALTHCHECK CMD ["dorun", "healthcheck"] with the image's ENV DORUN_ADMIN_URL.
    assert_eq!(health[0], "dorun");
    let status = as_image_user(&bin, &health[1..])
        .env_clear()
        .env("DORUN_ADMIN_URL", &admin)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the health check failed");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_binary_links_only_what_debian_slim_has() {
    let output = Command::new("ldd").arg(dorun_binary()).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let allowed = [
        "linux-vdso",
        "libgcc_s",
        "libm.",
        "libc.",
        "ld-linux",
        "libpthread",
        "libdl",
        "librt",
        "libstdc++",
    ];
    for line in text.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            allowed.iter().any(|a| name.contains(a)),
            "{name} is not in debian:bookworm-slim:\n{text}"
        );
    }
}
