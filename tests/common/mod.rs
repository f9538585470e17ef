//! Black-box harness: start an example as its own process on a free loopback port and talk
//! to it over HTTP.
//!
//! Every example prints `listening on http://ADDR` as its first line of standard output and
//! reads `PORT` (0 = any free port) and `HOST` (default 127.0.0.1). `cargo test` builds the
//! examples before it runs the tests, next to the test binaries.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running example; killed when dropped.
pub struct Example {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client that never uses a proxy.
    pub client: reqwest::Client,
    /// The lines the example wrote to standard error, if started with
    /// [`Example::start_logged`] (else they go to the test's).
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// The thread reading standard error into [`Example::stderr`].
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    child: Child,
}

/// The path of the compiled example `name`.
pub fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

impl Example {
    /// Starts example `name` with `env` (on top of `PORT=0`, and `RUST_LOG=warn`), and waits
    /// for its `listening on` line (at most 30 s).
    pub fn start(name: &str, env: &[(&str, &str)]) -> Example {
        Self::spawn(name, env, false)
    }

    /// [`Example::start`], keeping what the example logs (standard error) in
    /// [`Example::stderr`].
    pub fn start_logged(name: &str, env: &[(&str, &str)]) -> Example {
        Self::spawn(name, env, true)
    }

    /// The lines the example logged so far (see [`Example::start_logged`]).
    pub fn logged(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn spawn(name: &str, env: &[(&str, &str)], log: bool) -> Example {
        let mut command = Command::new(example_path(name));
        command
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("RUST_LOG", "warn")
            .env_remove("REDIS_URL")
            .env_remove("KV_URL")
            .env_remove("RATE_LIMIT_ENABLED")
            .env_remove("TRUSTED_PROXIES")
            .env_remove("ADMIN_TOKEN")
            .env_remove("ENDPOINTWISE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(if log {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start the example");
        let logged = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = child.stderr.take().map(|stderr| {
            let logged = logged.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logged.lock().unwrap().push(line);
                }
            })
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_string());
                    break;
                }
            }
            // Keep draining so the example never blocks on a full pipe.
            for _ in lines {}
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            if let Ok(url) = rx.recv_timeout(Duration::from_millis(100)) {
                break url;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("example {name} exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "example {name} did not start in 30 s"
            );
        };
        Example {
            base,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            stderr: logged,
            stderr_reader,
            child,
        }
    }

    /// Stops the example and returns every line it logged (see [`Example::start_logged`]),
    /// to its last.
    pub fn stop_logged(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.logged()
    }

    /// A request builder for `method` on `path`.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// The example's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The example's resident memory in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    /// POST `path`.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }

    /// A partner key seed 004 creates (`POST /admin/keys` with the admin token `admin` and
    /// the key's description `key`, as `{"name", "scope", "rate_limit"}`).
    pub async fn created_key(&self, admin: &str, key: serde_json::Value) -> String {
        let created: serde_json::Value = self
            .post("/admin/keys")
            .bearer_auth(admin)
            .json(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["key"].as_str().unwrap().to_string()
    }

    /// The JSON `GET path` answers (`/openapi.json`).
    pub async fn json(&self, path: &str) -> serde_json::Value {
        self.get(path).send().await.unwrap().json().await.unwrap()
    }

    /// The status of each of `n` requests made by `make`, one after another.
    pub async fn statuses(&self, n: usize, make: impl Fn() -> reqwest::RequestBuilder) -> Vec<u16> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(make().send().await.unwrap().status().as_u16());
        }
        out
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A header of a response as text ("" if absent).
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
        .unwrap_or_default()
}

/// A Redis URL on a loopback port nothing listens on (one just freed): a Redis down from
/// the start.
pub fn unreachable_redis_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("redis://127.0.0.1:{port}/")
}

/// `n` times `status`.
pub fn times(status: u16, n: usize) -> Vec<u16> {
    vec![status; n]
}

/// One keep-alive HTTP/1.1 connection that sends request targets exactly as given (no
/// normalisation of `..` or `%2E`, unlike `reqwest`), and reads each response in turn.
/// Blocking: the example runs in its own process.
///
/// Like any HTTP/1.1 client, it opens a new connection for the request after a response
/// that said `Connection: close`.
pub struct RawConnection {
    base: String,
    reader: BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
    /// The last response said `Connection: close`.
    closed: bool,
}

/// A response read by [`RawConnection`].
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl RawResponse {
    /// A header's value ("" if absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

impl RawConnection {
    /// Connects to `base` (`http://HOST:PORT`).
    pub fn connect(base: &str) -> RawConnection {
        let addr = base.strip_prefix("http://").expect("http:// base");
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        RawConnection {
            base: base.to_string(),
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            closed: false,
        }
    }

    /// Sends `method target` with `headers` (and no body), and reads the response.
    pub fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> RawResponse {
        self.send_body(method, target, headers, "")
    }

    /// Sends `method target` with `headers` and `body`, and reads the response.
    pub fn send_body(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> RawResponse {
        self.send_parts(method, target, headers, body, None)
    }

    /// [`RawConnection::send_body`], the body sent `pause` after the head (as many clients
    /// send it: in a write of its own).
    pub fn send_body_after(
        &mut self,
        pause: Duration,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> RawResponse {
        self.send_parts(method, target, headers, body, Some(pause))
    }

    fn send_parts(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
        pause: Option<Duration>,
    ) -> RawResponse {
        use std::io::{Read, Write};
        if self.closed {
            *self = RawConnection::connect(&self.base);
        }
        let mut request = format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        if let Some(pause) = pause {
            self.writer.write_all(request.as_bytes()).unwrap();
            std::thread::sleep(pause);
            request.clear();
        }
        request.push_str(body);
        self.writer.write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        self.closed = headers
            .iter()
            .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"));
        RawResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}
