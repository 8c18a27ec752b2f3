//! The local API (docs/api.md): HTTP/1.1 with JSON on a Unix socket,
//! `/run/procflow/api.sock` by default.
//!
//! Each connection's peer credentials (SO_PEERCRED) decide what it may do:
//! root and members of the `procflow` group (when it exists) may read,
//! everyone else is refused; only root may change anything (nothing can be
//! changed yet). The socket file is 0660 root:procflow, so the kernel
//! refuses others before procflow does.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::hub::Hub;

pub const DEFAULT_API: &str = "/run/procflow/api.sock";
/// The group whose members may read the API, unless `--api-group` names
/// another.
pub const GROUP: &str = "procflow";
/// Connections served at once; more are answered 503.
const MAX_CONNECTIONS: usize = 128;
/// Request line and headers, at most.
const MAX_REQUEST: usize = 16 * 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Serve the local API (docs/api.md) on this Unix socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_API, conflicts_with = "no_api")]
    pub api: PathBuf,
    /// The group whose members may read the API (the socket's group).
    #[arg(long, value_name = "GROUP", default_value = GROUP, conflicts_with = "no_api")]
    pub api_group: String,
    /// Do not serve the local API.
    #[arg(long)]
    pub no_api: bool,
}

/// The API's listening thread; the socket file is removed on drop.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The gid of group `name`, when it exists.
pub fn group_gid(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Admin,
    Read,
    Refused,
}

/// Decides a peer by its credentials: root is admin; a process whose
/// primary or supplementary groups include `gid` may read. The groups come
/// from /proc/PID/status, taken only while that pid still has the uid the
/// socket reported (a pid reused by another process is refused).
pub fn access_of(pid: i32, uid: u32, gid: u32, group: Option<u32>) -> Access {
    if uid == 0 {
        return Access::Admin;
    }
    let Some(g) = group else {
        return Access::Refused;
    };
    if gid == g {
        return Access::Read;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Access::Refused;
    };
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    if !field("Uid:").contains(&uid) {
        return Access::Refused;
    }
    if field("Groups:").contains(&g) || field("Gid:").contains(&g) {
        Access::Read
    } else {
        Access::Refused
    }
}

impl Server {
    /// Binds the socket and serves it on a thread of its own. `db` is the
    /// history that `/v1/history` reads. Another procflow already serving
    /// the path is a warning, not an error: the monitor runs all the same.
    pub fn start(args: &ApiArgs, hub: &Arc<Hub>, db: Option<PathBuf>) -> Result<Option<Server>> {
        if args.no_api {
            return Ok(None);
        }
        let path = &args.api;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {} for the API socket", dir.display()))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                bail!(
                    "--api {}: the path exists and is not a socket; remove it or choose another",
                    path.display()
                );
            }
            if UnixStream::connect(path).is_ok() {
                tracing::warn!(
                    "API not served: another procflow serves {} (use --api PATH or --no-api)",
                    path.display()
                );
                return Ok(None);
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("serving the API on {}", path.display()))?;
        let name: Arc<str> = args.api_group.as_str().into();
        let group = group_gid(&name);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        match group {
            Some(g) => std::os::unix::fs::chown(path, Some(0), Some(g))
                .with_context(|| format!("giving {} to group {name}", path.display()))?,
            None if &*name != GROUP => tracing::warn!(
                "API: there is no group {name} (--api-group): only root may read the API"
            ),
            None => {}
        }
        let hub = Arc::clone(hub);
        let active = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(stream) = conn else { continue };
                    if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                        let mut s = stream;
                        let _ = respond(&mut s, 503, &error_body("too many connections"));
                        continue;
                    }
                    active.fetch_add(1, Ordering::Relaxed);
                    let (hub, active, db) = (Arc::clone(&hub), Arc::clone(&active), db.clone());
                    let name = Arc::clone(&name);
                    let spawned =
                        std::thread::Builder::new()
                            .name("api-conn".into())
                            .spawn(move || {
                                serve(stream, &hub, db.as_deref(), group, &name);
                                active.fetch_sub(1, Ordering::Relaxed);
                            });
                    if spawned.is_err() {
                        tracing::warn!("API: cannot start a thread for a connection");
                    }
                }
            })
            .context("starting the API thread")?;
        tracing::info!("API: serving {}", path.display());
        Ok(Some(Server { path: path.clone() }))
    }
}

fn error_body(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn respond(s: &mut UnixStream, status: u16, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        reason(status),
        body.len() + 1
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.write_all(b"\n")?;
    s.flush()
}

/// A parsed request: method, path and query parameters.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Parses the request line and headers (`head` is everything before the
/// blank line).
pub fn parse_request(head: &str) -> Result<Request, String> {
    let line = head.lines().next().ok_or("empty request")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line: {line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported protocol {version:?} (HTTP/1.1 only)"));
    }
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let mut query = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (unescape(k), unescape(v)) else {
            return Err(format!("bad query parameter {pair:?}"));
        };
        query.push((k, v));
    }
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
    })
}

fn read_head(s: &mut UnixStream) -> Result<String, String> {
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?).take(MAX_REQUEST as u64);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => return Err("request ended before its headers did".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the request: {e}")),
        }
        if line == "\r\n" || line == "\n" {
            return Ok(head);
        }
        head.push_str(&line);
    }
}

fn serve(mut s: UnixStream, hub: &Hub, db: Option<&Path>, group: Option<u32>, name: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let access = match nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
    {
        Ok(c) => access_of(c.pid(), c.uid(), c.gid(), group),
        Err(_) => Access::Refused,
    };
    let head = match read_head(&mut s) {
        Ok(h) => h,
        Err(e) => {
            let _ = respond(&mut s, 400, &error_body(&e));
            return;
        }
    };
    let req = match parse_request(&head) {
        Ok(r) => r,
        Err(e) => {
            let _ = respond(&mut s, 400, &error_body(&e));
            return;
        }
    };
    if access == Access::Refused {
        let msg = match group {
            Some(_) => format!(
                "permission denied: only root and members of the {name} group may read procflow's API"
            ),
            None => format!(
                "permission denied: only root may read procflow's API (create a {name} group to let its members read)"
            ),
        };
        let _ = respond(&mut s, 403, &error_body(&msg));
        return;
    }
    if req.method != "GET" {
        let (status, msg) = if access == Access::Admin {
            (
                405,
                format!(
                    "{} {}: nothing can be changed through the API yet",
                    req.method, req.path
                ),
            )
        } else {
            (
                403,
                "permission denied: only root may change anything".to_string(),
            )
        };
        let _ = respond(&mut s, status, &error_body(&msg));
        return;
    }
    let r = match req.path.as_str() {
        "/v1/snapshot" => snapshot(&mut s, hub, &req),
        "/v1/subscribe" => subscribe(&mut s, hub, &req),
        "/v1/history" => history(&mut s, db, &req),
        "/v1/stats" => {
            let snap = hub.snapshot(None);
            respond(&mut s, 200, &snap.stats.to_string())
        }
        p => respond(
            &mut s,
            404,
            &error_body(&format!(
                "no such call {p:?}: the calls are /v1/snapshot, /v1/subscribe, /v1/history, /v1/stats"
            )),
        ),
    };
    if let Err(e) = r {
        tracing::debug!("API: {e}");
    }
}

fn param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Which flows a snapshot carries: `flows=all` (the default), `none`, or
/// a comma-separated list of pids.
pub fn flows_param(v: Option<&str>) -> Result<Option<Vec<u32>>, String> {
    match v {
        None | Some("all") => Ok(None),
        Some("none") | Some("") => Ok(Some(Vec::new())),
        Some(list) => list
            .split(',')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(|_| format!("flows={list}: not all, none or a list of pids")),
    }
}

fn snapshot(s: &mut UnixStream, hub: &Hub, req: &Request) -> std::io::Result<()> {
    let pid = match param(req, "pid").map(str::parse::<u32>).transpose() {
        Ok(p) => p,
        Err(_) => return respond(s, 400, &error_body("pid: not a process id")),
    };
    let flows_of = match flows_param(param(req, "flows")) {
        Ok(f) => f,
        Err(e) => return respond(s, 400, &error_body(&e)),
    };
    let exe = param(req, "exe");
    let keep = |o: &procflow_core::live::LiveOwner| {
        pid.is_none_or(|p| o.pid == p) && exe.is_none_or(|e| o.exe.as_deref() == Some(e))
    };
    let keep_flow = |f: &procflow_core::live::LiveFlow| {
        keep(&f.owner)
            && flows_of
                .as_ref()
                .is_none_or(|pids| pids.contains(&f.owner.pid))
    };
    let mut snap = hub.snapshot_with(Some(Duration::from_secs(3)), &keep_flow);
    if pid.is_some() || exe.is_some() {
        snap.processes.retain(|p| keep(&p.owner));
    }
    let body = serde_json::to_string(&snap).unwrap_or_default();
    respond(s, 200, &body)
}

fn subscribe(s: &mut UnixStream, hub: &Hub, req: &Request) -> std::io::Result<()> {
    let after = match param(req, "after").map(str::parse::<u64>).transpose() {
        Ok(a) => a,
        Err(_) => return respond(s, 400, &error_body("after: not a sequence number")),
    };
    let sub = match hub.subscribe(after) {
        Ok(sub) => sub,
        Err(gap) => {
            let body = serde_json::json!({
                "error": format!(
                    "sequence number {} is no longer kept (oldest {}); take a fresh snapshot",
                    after.unwrap_or(0), gap.oldest),
                "oldest": gap.oldest,
                "current": gap.current,
            });
            return respond(s, 409, &body.to_string());
        }
    };
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n",
    )?;
    let send = |s: &mut UnixStream, line: &[u8]| -> std::io::Result<()> {
        s.write_all(line).inspect_err(|e| {
            // A client that takes nothing for the write timeout is dropped.
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                hub.note_dropped(&sub);
            }
        })
    };
    loop {
        match sub.rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => send(s, line.as_bytes())?,
            // A keep-alive line lets a client see that the daemon is there.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                send(s, b"{\"type\":\"keepalive\"}\n")?
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let why = format!(
                    "{{\"type\":\"dropped\",\"reason\":\"this subscriber fell {} lines behind; \
                     take a fresh snapshot and subscribe again\"}}\n",
                    crate::hub::SUBSCRIBER_QUEUE
                );
                s.write_all(why.as_bytes())?;
                return Ok(());
            }
        }
    }
}

/// `/v1/history?since=1h&by=exe...`: `procflow report`'s options as query
/// parameters (a parameter without a value is a flag), always as JSON,
/// from the daemon's own store.
pub fn history_args(req: &Request, db: &Path) -> Result<procflow_store::ReportArgs, String> {
    use clap::{Args, FromArgMatches};
    let mut argv = vec!["history".to_string()];
    for (k, v) in &req.query {
        if matches!(k.as_str(), "db" | "chart" | "format") {
            return Err(format!(
                "{k}: not an option of /v1/history (it reads the daemon's store and answers JSON)"
            ));
        }
        argv.push(format!("--{}", k.replace('_', "-")));
        if !v.is_empty() {
            argv.push(v.clone());
        }
    }
    argv.push("--format".into());
    argv.push("json".into());
    argv.push("--db".into());
    argv.push(db.display().to_string());
    let cmd = procflow_store::ReportArgs::augment_args(clap::Command::new("history"));
    let m = cmd.try_get_matches_from(argv).map_err(|e| {
        e.render()
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })?;
    procflow_store::ReportArgs::from_arg_matches(&m).map_err(|e| e.to_string())
}

fn history(s: &mut UnixStream, db: Option<&Path>, req: &Request) -> std::io::Result<()> {
    let Some(db) = db else {
        return respond(
            s,
            404,
            &error_body("this procflow runs without a store (--no-db)"),
        );
    };
    let args = match history_args(req, db) {
        Ok(a) => a,
        Err(e) => return respond(s, 400, &error_body(&e)),
    };
    let mut out = Vec::new();
    match procflow_store::run_report(&args, &mut out) {
        Ok(()) => {
            let text = String::from_utf8_lossy(&out);
            respond(s, 200, text.trim_end())
        }
        Err(e) => respond(s, 400, &error_body(&e.to_string())),
    }
}

/// A GET to the API at `sock`; returns the status and the body.
pub fn get(sock: &Path, target: &str) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: procflow\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .context("reading the API's answer")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the API's answer has no headers")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("the API's answer has no status")?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_their_query() {
        let r = parse_request(
            "GET /v1/history?since=1h&by=exe%2Cremote&verdicts HTTP/1.1\r\nHost: x\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/v1/history");
        assert_eq!(
            r.query,
            vec![
                ("since".into(), "1h".into()),
                ("by".into(), "exe,remote".into()),
                ("verdicts".into(), "".into())
            ]
        );
        assert!(parse_request("GET /v1/snapshot").is_err());
        assert!(parse_request("GET / SPDY/3").is_err());
        assert!(parse_request("GET /?a=%zz HTTP/1.1").is_err());
        assert!(parse_request("").is_err());
    }

    #[test]
    fn history_takes_report_options_and_never_another_database() {
        let db = Path::new("/tmp/x.db");
        let req = parse_request("GET /v1/history?since=2h&by=exe&top=3 HTTP/1.1").unwrap();
        let a = history_args(&req, db).unwrap();
        assert_eq!(
            (a.since.as_str(), a.top, a.db.as_path()),
            ("2h", Some(3), db)
        );
        for bad in ["db=/etc/shadow", "chart=/tmp/x.svg", "format=csv"] {
            let req = parse_request(&format!("GET /v1/history?{bad} HTTP/1.1")).unwrap();
            let e = history_args(&req, db).unwrap_err();
            assert!(e.contains("not an option"), "{e}");
        }
        let req = parse_request("GET /v1/history?bogus=1 HTTP/1.1").unwrap();
        assert!(history_args(&req, db).unwrap_err().contains("bogus"));
    }

    #[test]
    fn the_flows_parameter_is_all_none_or_pids() {
        assert_eq!(flows_param(None), Ok(None));
        assert_eq!(flows_param(Some("all")), Ok(None));
        assert_eq!(flows_param(Some("none")), Ok(Some(vec![])));
        assert_eq!(flows_param(Some("1,22")), Ok(Some(vec![1, 22])));
        assert!(flows_param(Some("1,x")).unwrap_err().contains("flows=1,x"));
    }

    #[test]
    fn root_is_admin_and_others_need_the_group() {
        assert_eq!(access_of(1, 0, 0, None), Access::Admin);
        assert_eq!(access_of(1, 1000, 1000, None), Access::Refused);
        assert_eq!(access_of(1, 1000, 555, Some(555)), Access::Read);
        // pid 1 runs as root: a peer claiming uid 1000 there is refused.
        assert_eq!(access_of(1, 1000, 1000, Some(555)), Access::Refused);
    }
}
