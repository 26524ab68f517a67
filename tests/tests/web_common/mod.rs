//! Shared by the web tests: a seeded controller web server on a loopback ephemeral port, a
//! minimal HTTP/1.1 client, and a minimal WebDriver client for headless Chromium.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub use smtpguard_common::now_ms;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use smtpguard_controller::demo::{self, Seeded};
use smtpguard_controller::web::{self, AppState, PolicyPublisher, WebSettings};
use smtpguard_protocol::Policy;

/// The operator token of the test server.
pub const OPERATOR_TOKEN: &str = "noc-test-token-0123456789";

/// The ISP relay the test server's `[policy] isp_relays` names (the seeded fleet's relay).
pub const ISP_RELAY: &str = "198.51.100.7:587";

/// The address the test server's routers reach the broker at.
pub const AGENT_BROKER: &str = "192.0.2.10";

/// The web settings of the test server: its operator token and its policy safety context.
pub fn test_settings() -> WebSettings {
    let mut settings = WebSettings::new(OPERATOR_TOKEN);
    settings.policy_safety = smtpguard_protocol::SafetyContext {
        local_relays: vec![ISP_RELAY.parse().unwrap()],
        brokers: vec![AGENT_BROKER.parse().unwrap()],
    };
    settings
}

/// Stores published policies in the database (signing and MQTT are the policy module's job
/// and tested there).
struct StorePolicies(PathBuf);

impl PolicyPublisher for StorePolicies {
    fn publish(
        &self,
        mut policy: Policy,
        cpe_id: Option<String>,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + '_>> {
        Box::pin(async move {
            let store =
                smtpguard_controller::store::Store::open(&self.0).map_err(|e| e.to_string())?;
            let version = store.highest_policy_version().map_err(|e| e.to_string())? + 1;
            policy.policy_version = version;
            store
                .insert_policy(&smtpguard_controller::store::StoredPolicy {
                    version,
                    scope: if cpe_id.is_some() {
                        smtpguard_protocol::PolicyScope::Cpe
                    } else {
                        smtpguard_protocol::PolicyScope::Fleet
                    },
                    cpe_id,
                    policy_json: serde_json::to_string(&policy).map_err(|e| e.to_string())?,
                    wire: Vec::new(),
                    created_ms: 0,
                })
                .map_err(|e| e.to_string())?;
            Ok(version)
        })
    }
}

/// A running web server over a seeded database.
pub struct Server {
    pub addr: SocketAddr,
    pub seeded: Seeded,
    pub db: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    child: Option<Child>,
    /// The operator (NOC) token.
    pub operator: String,
}

impl Server {
    pub fn start() -> Result<Server> {
        Server::start_with(test_settings(), web::system_clock())
    }

    /// [`Server::start`] with other web settings and clock.
    pub fn start_with(settings: WebSettings, clock: web::Clock) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("controller.db");
        let seeded = demo::seed(&db, now_ms())?;
        let conn = web::open_db(&db)?;
        let state = AppState::new(conn, settings, Arc::new(StorePolicies(db.clone())), clock);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                web::serve(listener, state, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
        });
        Ok(Server {
            addr,
            seeded,
            db,
            _dir: dir,
            stop: Some(tx),
            thread: Some(thread),
            child: None,
            operator: OPERATOR_TOKEN.to_string(),
        })
    }

    /// The real `smtpguard-demo --seeded` process (embedded broker, ingest, web UI) on
    /// loopback ephemeral ports; tokens and facts are read from what it prints.
    pub fn start_demo_process() -> Result<Server> {
        use std::io::BufRead;
        let dir = tempfile::tempdir()?;
        // The seeded fleet is deterministic except for tokens and times: learn its shape
        // from a throwaway copy, then take tokens and the abuse time from the output.
        let mut seeded = demo::seed(&dir.path().join("shape.db"), now_ms())?;
        let bin = smtpguard_tests::mqtt::demo_binary()?;
        let http_port = smtpguard_tests::mqtt::free_port()?;
        let mqtt_port = smtpguard_tests::mqtt::free_port()?;
        let data = dir.path().join("demo");
        let mut child = Command::new(bin)
            .args([
                "--seeded",
                "--http",
                &format!("127.0.0.1:{http_port}"),
                "--mqtt",
                &format!("127.0.0.1:{mqtt_port}"),
                "--dir",
            ])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut printed = Vec::new();
        for line in lines.by_ref() {
            let line = line?;
            let done = line.starts_with("Ctrl-C stops the demo.");
            printed.push(line);
            if done {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        for h in &mut seeded.households {
            let line = printed
                .iter()
                .find(|l| l.contains("portal:") && l.contains(&h.name))
                .with_context(|| format!("no token for {} in {printed:?}", h.name))?;
            h.token = line.rsplit(' ').next().unwrap_or("").to_string();
            h.letter_code = line
                .split("letter code: ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("")
                .to_string();
        }
        let op = printed
            .iter()
            .find_map(|l| l.split("operator token: ").nth(1))
            .context("no operator token")?;
        let operator = op.trim().to_string();
        let time = printed
            .iter()
            .find_map(|l| l.split("\"time\":").nth(1))
            .and_then(|t| t.split('}').next())
            .and_then(|t| t.parse().ok())
            .context("no abuse example time")?;
        seeded.abuse_example.0 = time;
        let addr: SocketAddr = format!("127.0.0.1:{http_port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(addr, "GET", "/healthz", &[], b"")
            .map(|r| r.status)
            .ok()
            != Some(200)
        {
            if Instant::now() > deadline {
                bail!("demo web server did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Server {
            addr,
            seeded,
            db: data.join("controller.db"),
            _dir: dir,
            stop: None,
            thread: None,
            child: Some(child),
            operator,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the demo shuts down cleanly (as on Ctrl-C).
            let _ = smtpguard_tests::mqtt::terminate(&mut child);
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp> {
    request(TcpStream::connect(addr)?, addr, method, path, headers, body)
}

/// [`http`] from the loopback source address `src` (any of 127.0.0.0/8), so a test can be
/// several clients.
pub fn http_from(
    src: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(src, 0))?;
        socket.connect(addr).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    request(stream, addr, method, path, headers, body)
}

fn request(
    mut s: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp> {
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // A server may answer (413) before reading a large body; ignore a reset while sending.
    let _ = s.write_all(body);
    // Read by Content-Length: some servers (chromedriver) keep the connection open despite
    // `Connection: close`.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!(
                "connection closed before the response headers: {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut rest = raw[head_end + 4..].to_vec();
    let chunked = find("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        rest.truncate(len);
    } else if chunked {
        while !rest.windows(5).any(|w| w == b"0\r\n\r\n") {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
    } else {
        let _ = s.read_to_end(&mut rest);
    }
    let text = String::from_utf8_lossy(&rest).to_string();
    let body = if chunked { dechunk(&text) } else { text };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Logs in through the form and returns the session cookie (`sg_session=...`).
pub fn login(addr: SocketAddr, token: &str) -> Result<String> {
    let body = format!("token={token}");
    let r = http(
        addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )?;
    if r.status != 303 {
        bail!("login answered {}", r.status);
    }
    let cookie = r.header("set-cookie").context("no cookie")?;
    Ok(cookie.split(';').next().unwrap_or("").to_string())
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Posts a form (`fields`, encoded here) with the session `cookie`.
///
/// # Errors
/// When the request fails.
pub fn post_form(
    addr: SocketAddr,
    path: &str,
    cookie: &str,
    fields: &[(&str, &str)],
) -> Result<Resp> {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    http(
        addr,
        "POST",
        path,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", cookie),
        ],
        body.join("&").as_bytes(),
    )
}

/// The CSRF token in a page's forms.
pub fn csrf_of(page: &str) -> Option<String> {
    let i = page.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    Some(page[i..].split('"').next()?.to_string())
}

// ---- WebDriver ----

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A chromedriver process with one headless Chromium session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start(width: u32, height: u32) -> Result<Browser> {
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting /usr/bin/chromedriver (apt-get install chromium chromium-driver)")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: tempfile::tempdir()?,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http(addr, "GET", "/status", &[], b"") {
                if r.status == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not start");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = b._profile.path().display().to_string();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--hide-scrollbars",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={profile}")]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["sessionId"]
            .as_str()
            .context("no session id")?
            .to_string();
        // Element look-ups wait (bounded) for the element, e.g. for the page a submitted
        // form leads to, instead of racing its load.
        b.call(
            "POST",
            &b.s("/timeouts"),
            Some(json!({ "implicit": 10_000, "pageLoad": 30_000 })),
        )?;
        Ok(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = http(
            self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )?;
        let v: Value = serde_json::from_str(&r.body)
            .with_context(|| format!("webdriver said {:?}", r.body))?;
        if r.status != 200 {
            bail!("webdriver {method} {path}: {} {}", r.status, v["value"]);
        }
        Ok(v["value"].clone())
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })))?;
        Ok(())
    }

    pub fn url(&self) -> Result<String> {
        Ok(self
            .call("GET", &self.s("/url"), None)?
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// Waits (at most 10 s) until the page's address ends with `suffix`, as after a form
    /// post that redirects; true when it did. A navigation still under way is not a failure.
    pub fn url_ends_with(&self, suffix: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if self.url().is_ok_and(|u| u.ends_with(suffix)) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn find(&self, css: &str) -> Result<String> {
        let v = self.call(
            "POST",
            &self.s("/element"),
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no element {css}"))
    }

    pub fn find_all(&self, css: &str) -> Result<Vec<String>> {
        let v = self.call(
            "POST",
            &self.s("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_object()?.values().next()?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn text(&self, element: &str) -> Result<String> {
        Ok(self
            .call("GET", &self.s(&format!("/element/{element}/text")), None)?
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// The visible text of the whole page.
    /// Retries while a navigation replaces the page (stale element), bounded to 5 s.
    pub fn page_text(&self) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.find("body").and_then(|body| self.text(&body)) {
                Ok(t) => return Ok(t),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css)?;
        self.call(
            "POST",
            &self.s(&format!("/element/{e}/value")),
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    /// Empties a text field or text area.
    pub fn clear(&self, css: &str) -> Result<()> {
        let e = self.find(css)?;
        self.call(
            "POST",
            &self.s(&format!("/element/{e}/clear")),
            Some(json!({})),
        )?;
        Ok(())
    }

    pub fn click(&self, css: &str) -> Result<()> {
        let e = self.find(css)?;
        self.call(
            "POST",
            &self.s(&format!("/element/{e}/click")),
            Some(json!({})),
        )?;
        Ok(())
    }

    /// Clicks a link or submit button and waits until the page it leads to has loaded: a
    /// WebDriver click may return before the server has answered a form post.
    pub fn follow(&self, css: &str) -> Result<()> {
        self.execute("window.__sgLeaving = true; return true;")?;
        self.click(css)?;
        if self.wait_until_within(
            "!window.__sgLeaving && document.readyState === 'complete'",
            Duration::from_secs(30),
        ) {
            Ok(())
        } else {
            bail!("clicking {css} led to no new page within 30 s")
        }
    }

    /// Saves a full-window PNG to `target/screenshots/NAME.png` and, when asked, to
    /// `docs/screenshots/NAME.png`; returns the bytes.
    pub fn screenshot(&self, name: &str) -> Result<Vec<u8>> {
        let v = self.call("GET", &self.s("/screenshot"), None)?;
        let png = base64_decode(v.as_str().context("screenshot")?)?;
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        for dir in [
            root.join("target/screenshots"),
            root.join("docs/screenshots"),
        ] {
            if dir.ends_with("docs/screenshots")
                && std::env::var_os("SMTPGUARD_DOC_SCREENSHOTS").is_none()
            {
                continue;
            }
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("{name}.png")), &png)?;
        }
        Ok(png)
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub fn execute(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits (at most 10 s) until the JavaScript expression `condition` is true in the
    /// page, as after a form post that reloads the same address; true when it did.
    pub fn wait_until(&self, condition: &str) -> bool {
        self.wait_until_within(condition, Duration::from_secs(10))
    }

    /// [`Browser::wait_until`] with another bound.
    pub fn wait_until_within(&self, condition: &str, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            if self
                .execute(&format!("return !!({condition});"))
                .is_ok_and(|v| v == Value::Bool(true))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Checks the page as a phone user and a screen-reader user would, with [`AUDIT_JS`];
    /// returns every problem found (empty: none).
    pub fn audit(&self) -> Result<Vec<String>> {
        let v = self.execute(AUDIT_JS)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            "POST",
            &self.s("/window/rect"),
            Some(json!({"width": width, "height": height})),
        )?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &self.s(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The in-page audit behind [`Browser::audit`]:
/// - no horizontal overflow: `scrollWidth <= innerWidth`;
/// - WCAG 2.1 AA contrast of every visible text: the computed colour against the first
///   opaque background behind it, at least 4.5:1 (3:1 for large text: 24 px, or 18.66 px
///   bold);
/// - every table has a caption and a `thead` whose `th` carry `scope`;
/// - a NOC navigation marks the current section with `aria-current`;
/// - a skip link to `#main`, which exists.
pub const AUDIT_JS: &str = r##"
var out=[];
var de=document.documentElement;
if(de.scrollWidth>window.innerWidth){out.push('horizontal overflow: '+de.scrollWidth+' > '+window.innerWidth);}
function rgba(s){var m=s.match(/rgba?\(([^)]+)\)/);if(!m)return null;var p=m[1].split(',').map(function(x){return parseFloat(x)});return {r:p[0],g:p[1],b:p[2],a:p.length>3?p[3]:1};}
function lin(c){c=c/255;return c<=0.03928?c/12.92:Math.pow((c+0.055)/1.055,2.4);}
function lum(c){return 0.2126*lin(c.r)+0.7152*lin(c.g)+0.0722*lin(c.b);}
function bgOf(el){var layers=[];for(var e=el;e;e=e.parentElement){var c=rgba(getComputedStyle(e).backgroundColor);if(c&&c.a>0){layers.push(c);if(c.a>=1)break;}}
 var base={r:255,g:255,b:255};for(var i=layers.length-1;i>=0;i--){var l=layers[i];base={r:l.r*l.a+base.r*(1-l.a),g:l.g*l.a+base.g*(1-l.a),b:l.b*l.a+base.b*(1-l.a)};}return base;}
var seen=0;
document.querySelectorAll('body *').forEach(function(el){
 var own=false;el.childNodes.forEach(function(n){if(n.nodeType===3&&n.textContent.trim())own=true;});
 if(!own)return;
 var cs=getComputedStyle(el);
 if(cs.visibility==='hidden'||cs.display==='none')return;
 var r=el.getBoundingClientRect();if(r.width<1||r.height<1||r.right<0||r.bottom<0)return;
 var fg=rgba(cs.color);if(!fg)return;var bg=bgOf(el);
 fg={r:fg.r*fg.a+bg.r*(1-fg.a),g:fg.g*fg.a+bg.g*(1-fg.a),b:fg.b*fg.a+bg.b*(1-fg.a)};
 var a=lum(fg),b=lum(bg);var ratio=(Math.max(a,b)+0.05)/(Math.min(a,b)+0.05);
 var size=parseFloat(cs.fontSize),bold=parseInt(cs.fontWeight,10)>=700;
 var need=(size>=24||(size>=18.66&&bold))?3:4.5;seen++;
 if(ratio<need){out.push('contrast '+ratio.toFixed(2)+':1 < '+need+' for <'+el.tagName.toLowerCase()+' class="'+el.className+'"> '+JSON.stringify(el.textContent.trim().slice(0,40)));}
});
if(seen===0){out.push('no visible text checked');}
document.querySelectorAll('table').forEach(function(t,i){
 var name='table #'+i+(t.id?' ('+t.id+')':'');
 if(!t.querySelector(':scope > caption'))out.push(name+' has no caption');
 if(!t.querySelector(':scope > thead'))out.push(name+' has no thead');
 t.querySelectorAll('th').forEach(function(th){if(!th.hasAttribute('scope'))out.push(name+': th without scope: '+th.textContent.trim().slice(0,30));});
});
var nav=document.querySelector('header nav');
if(nav&&!nav.querySelector('[aria-current]'))out.push('navigation has no aria-current');
var skip=document.querySelector('a.skip[href="#main"]');
if(!skip)out.push('no skip link');
if(!document.getElementById('main'))out.push('no #main');
return out;
"##;

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = vec![0u8; s.len() * 3 / 4 + 3];
    let n = smtpguard_common::base64_decode_into(s.as_bytes(), &mut out)
        .ok_or_else(|| anyhow!("bad base64"))?;
    out.truncate(n);
    Ok(out)
}
