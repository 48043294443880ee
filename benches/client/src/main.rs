//! Load client for `benches/scale.sh`, so the client is not what is measured (the suite's
//! Python WebSocket client tops out near 17k msg/s against any server).
//!
//! ```text
//! dorun-bench touch  <base-url> <path-template> <count> <concurrency>
//! dorun-bench reads  <base-url> <path-template> <count>
//! dorun-bench ws     <ws-url> <sockets> <messages-per-socket> pingpong|pipelined
//! ```
//! `<path-template>` has `{}` where the object number goes (`/kv/a{}/get`). `touch` sends
//! one POST to each of `count` paths with `concurrency` requests in flight; `reads` GETs
//! each path once with one client and prints latency percentiles. Every command prints one
//! `RESULT key=value ...` line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::Message;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn usage() -> ! {
    eprintln!(
        "usage: dorun-bench touch <base> <template> <count> <concurrency>\n       \
         dorun-bench reads <base> <template> <count>\n       \
         dorun-bench ws <ws-url> <sockets> <messages> pingpong|pipelined"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("touch") => {
            touch(
                &arg::<String>(&args, 2),
                &arg::<String>(&args, 3),
                arg(&args, 4),
                arg(&args, 5),
            )
            .await
        }
        Some("reads") => {
            reads(
                &arg::<String>(&args, 2),
                &arg::<String>(&args, 3),
                arg(&args, 4),
            )
            .await
        }
        Some("ws") => {
            let mode = arg::<String>(&args, 5);
            ws(
                &arg::<String>(&args, 2),
                arg(&args, 3),
                arg(&args, 4),
                &mode,
            )
            .await
        }
        _ => usage(),
    };
    if let Err(error) = result {
        eprintln!("dorun-bench: {error}");
        std::process::exit(1);
    }
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(client: &HttpClient, method: &str, url: &str) -> Result<(), String> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {:?}", body.to_bytes()));
    }
    Ok(())
}

async fn touch(base: &str, template: &str, count: usize, concurrency: usize) -> Result<(), String> {
    let client = client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers = (0..concurrency.max(1)).map(|_| {
        let (client, next) = (client.clone(), next.clone());
        let (base, template) = (base.to_string(), template.to_string());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), String>(());
                }
                send(
                    &client,
                    "POST",
                    &format!("{base}{}", template.replace("{}", &i.to_string())),
                )
                .await?;
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.map_err(|e| e.to_string())??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "RESULT requests={count} secs={elapsed:.3} rps={:.0}",
        count as f64 / elapsed
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

async fn reads(base: &str, template: &str, count: usize) -> Result<(), String> {
    let client = client();
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let url = format!("{base}{}", template.replace("{}", &i.to_string()));
        let start = Instant::now();
        send(&client, "GET", &url).await?;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    println!(
        "RESULT requests={count} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    Ok(())
}

async fn ws(url: &str, sockets: usize, messages: usize, mode: &str) -> Result<(), String> {
    let pipelined = match mode {
        "pingpong" => false,
        "pipelined" => true,
        _ => usage(),
    };
    let mut connections = Vec::new();
    for _ in 0..sockets {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        connections.push(socket);
    }
    let start = Instant::now();
    let tasks = connections.into_iter().map(|socket| {
        tokio::spawn(async move {
            if pipelined {
                echo_pipelined(socket, messages).await
            } else {
                echo_pingpong(socket, messages).await
            }
        })
    });
    let mut latencies = Vec::new();
    for task in futures::future::join_all(tasks).await {
        latencies.extend(task.map_err(|e| e.to_string())??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "RESULT messages={} secs={elapsed:.3} msgs_per_s={:.0} p50_ms={:.3} p99_ms={:.3}",
        sockets * messages,
        (sockets * messages) as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    Ok(())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const PAYLOAD: &str = "0123456789abcdef0123456789abcdef";

async fn next_text(socket: &mut Socket) -> Result<(), String> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(_))) | Some(Ok(Message::Binary(_))) => return Ok(()),
            Some(Ok(Message::Close(_))) | None => return Err("socket closed".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// One message in flight per socket; returns each round trip.
async fn echo_pingpong(mut socket: Socket, messages: usize) -> Result<Vec<Duration>, String> {
    let mut latencies = Vec::with_capacity(messages);
    for _ in 0..messages {
        let start = Instant::now();
        socket
            .send(Message::text(PAYLOAD))
            .await
            .map_err(|e| e.to_string())?;
        next_text(&mut socket).await?;
        latencies.push(start.elapsed());
    }
    let _ = socket.close(None).await;
    Ok(latencies)
}

/// Up to 32 messages in flight per socket; returns each message's send-to-echo time.
async fn echo_pipelined(socket: Socket, messages: usize) -> Result<Vec<Duration>, String> {
    const WINDOW: usize = 32;
    let (mut sink, mut stream) = socket.split();
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<Instant>(WINDOW);
    let writer = async move {
        for _ in 0..messages {
            let permit = sent_tx.reserve().await.map_err(|e| e.to_string())?;
            permit.send(Instant::now());
            sink.send(Message::text(PAYLOAD))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(sink)
    };
    let reader = async move {
        let mut latencies = Vec::with_capacity(messages);
        while latencies.len() < messages {
            match stream.next().await {
                Some(Ok(Message::Text(_))) | Some(Ok(Message::Binary(_))) => {
                    let sent = sent_rx.recv().await.ok_or("writer stopped")?;
                    latencies.push(sent.elapsed());
                }
                Some(Ok(Message::Close(_))) | None => return Err("socket closed".to_string()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
        Ok(latencies)
    };
    let (mut sink, latencies) = tokio::try_join!(writer, reader)?;
    let _ = sink.close().await;
    Ok(latencies)
}
