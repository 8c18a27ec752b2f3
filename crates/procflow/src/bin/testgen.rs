//! procflow-testgen: moves exact, known amounts of data for procflow's root
//! tests and benchmarks, and prints what it moved as JSON, so that procflow's
//! counts can be compared with ground truth. It only talks to the addresses
//! it is given (loopback or test namespaces).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, Parser)]
#[command(name = "procflow-testgen")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Accept COUNT connections; read each to EOF, then send DOWNLOAD bytes.
    TcpServe {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 0)]
        download: u64,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Read with splice(2) into a pipe instead of read(2).
        #[arg(long)]
        splice: bool,
        /// Serve each connection in its own thread.
        #[arg(long)]
        parallel: bool,
    },
    /// Exchange BEFORE bytes each way, wait for a line on standard input,
    /// then AFTER bytes each way, then close (pair with tcp-phased-serve).
    TcpPhased {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        before: u64,
        #[arg(long)]
        after: u64,
    },
    /// Server side of tcp-phased: echo BEFORE then AFTER bytes.
    TcpPhasedServe {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        before: u64,
        #[arg(long)]
        after: u64,
    },
    /// Send UPLOAD bytes spread evenly over SECS seconds, then close.
    TcpSlow {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        upload: u64,
        #[arg(long)]
        secs: f64,
    },
    /// Connect, wait for a line on standard input, then hand the socket to a
    /// child process (as its standard input) that sends UPLOAD bytes on it.
    Handoff {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        upload: u64,
    },
    /// Write BYTES to standard input (a socket handed over by `handoff`).
    StdinSend {
        #[arg(long)]
        bytes: u64,
    },
    /// COUNT concurrent connections; connection i uploads a size derived
    /// from i (1..=MAX_UPLOAD) at a small random-ish delay; one line each,
    /// with CLOCK_REALTIME nanoseconds of when it was connected
    /// (`opened_ns`, after connect returned), when it started to shut down
    /// (`shutdown_ns`, before its FIN; the socket was open until then) and
    /// when it was closed (`closed_ns`, after close returned).
    TcpMany {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        max_upload: u64,
        /// Spread the connection starts over this many milliseconds.
        #[arg(long, default_value_t = 1000)]
        spread_ms: u64,
        /// Every fourth connection pauses this many milliseconds more
        /// between the halves of its upload (so that some stay open across
        /// a monitor's start).
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
    },
    /// COUNT times: connect, send UPLOAD bytes, shut down writing, read to EOF.
    TcpSend {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 0)]
        upload: u64,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Send with sendfile(2) from a temporary file.
        #[arg(long)]
        sendfile: bool,
        /// Print one JSON line per connection.
        #[arg(long)]
        each: bool,
    },
    /// Send COUNT datagrams of SIZE bytes to each TO, from one socket.
    UdpSend {
        #[arg(long, required = true)]
        to: Vec<SocketAddr>,
        #[arg(long)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// connect() the socket to the (single) target and use send().
        #[arg(long)]
        connect: bool,
        /// Wait for one reply datagram per datagram sent.
        #[arg(long)]
        expect_reply: bool,
    },
    /// Receive COUNT datagrams; answer each with REPLY bytes if set.
    UdpRecv {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 0)]
        reply: usize,
    },
    /// ICMP echo over a ping socket: COUNT requests with SIZE payload bytes.
    Ping {
        #[arg(long)]
        to: std::net::IpAddr,
        #[arg(long, default_value_t = 56)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// As many short connections as possible for SECS seconds (benchmark).
    Storm {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        secs: f64,
    },
    /// Open CONNECTIONS loopback connections to itself (two sockets each),
    /// print "ready", and hold them until standard input closes (benchmark).
    Hold {
        #[arg(long)]
        connections: u64,
    },
    /// A DNS server for tests: answers COUNT queries, every A query with
    /// ANSWER (an IPv4 address) under the name asked.
    DnsServe {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        answer: std::net::Ipv4Addr,
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// A reverse-lookup server for tests: answers PTR queries for the
    /// addresses given as --ptr ADDR=NAME, NXDOMAIN for any other, until
    /// standard input closes; then prints how many queries it answered.
    PtrServe {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, value_parser = parse_ptr_arg)]
        ptr: Vec<(std::net::IpAddr, String)>,
    },
    /// Look NAME up (A) at SERVER, then connect to the answer on PORT and
    /// send UPLOAD bytes: a client that finds its remote through DNS.
    DnsConnect {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 0)]
        upload: u64,
    },
    /// Serve connections until killed: read to EOF, close (benchmark).
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn parse_ptr_arg(s: &str) -> Result<(std::net::IpAddr, String), String> {
    let (a, n) = s.split_once('=').ok_or("expected ADDR=NAME")?;
    Ok((a.parse().map_err(|e| format!("{a}: {e}"))?, n.to_string()))
}

fn ready(port: u16) {
    println!("ready {port}");
    std::io::stdout().flush().ok();
}

/// CLOCK_REALTIME in nanoseconds since the epoch (what the tests compare
/// with the time procflow said it was watching).
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn read_to_eof(s: &mut TcpStream) -> Res<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn read_exact_n(s: &mut TcpStream, n: u64) -> Res<()> {
    let mut buf = vec![0u8; 1 << 16];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        s.read_exact(&mut buf[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn splice_to_eof(s: &TcpStream) -> Res<u64> {
    use nix::fcntl::{splice, SpliceFFlags};
    let (r, w) = nix::unistd::pipe()?;
    let devnull = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let mut total = 0u64;
    loop {
        let n = splice(
            s.as_fd(),
            None,
            w.as_fd(),
            None,
            1 << 16,
            SpliceFFlags::SPLICE_F_MOVE,
        )?;
        if n == 0 {
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            left -= splice(
                r.as_fd(),
                None,
                devnull.as_fd(),
                None,
                left,
                SpliceFFlags::SPLICE_F_MOVE,
            )?;
        }
        total += n as u64;
    }
}

fn write_n(s: &mut TcpStream, n: u64) -> Res<()> {
    let chunk = pattern(1 << 16);
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn sendfile_n(s: &TcpStream, n: u64) -> Res<()> {
    let path = std::env::temp_dir().join(format!("procflow-testgen-{}", std::process::id()));
    std::fs::write(&path, pattern(n as usize))?;
    let f = std::fs::File::open(&path)?;
    std::fs::remove_file(&path)?;
    let mut off: i64 = 0;
    while (off as u64) < n {
        let left = (n - off as u64) as usize;
        nix::sys::sendfile::sendfile(s.as_fd(), f.as_fd(), Some(&mut off), left)?;
    }
    Ok(())
}

fn main() -> Res<()> {
    match Cli::parse().cmd {
        Cmd::TcpServe {
            listen,
            download,
            count,
            splice,
            parallel: true,
        } => {
            let l = TcpListener::bind(listen)?;
            ready(l.local_addr()?.port());
            let mut handles = Vec::new();
            for _ in 0..count {
                let (mut s, _) = l.accept()?;
                handles.push(std::thread::spawn(move || -> u64 {
                    let got = if splice {
                        splice_to_eof(&s)
                    } else {
                        read_to_eof(&mut s)
                    }
                    .unwrap_or(0);
                    let _ = write_n(&mut s, download);
                    let _ = s.shutdown(Shutdown::Write);
                    let _ = read_to_eof(&mut s);
                    got
                }));
            }
            let received: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
            println!(
                "{}",
                json!({"connections": count, "received": received, "sent": download * count, "pid": std::process::id()})
            );
        }
        Cmd::TcpServe {
            listen,
            download,
            count,
            splice,
            parallel: false,
        } => {
            let l = TcpListener::bind(listen)?;
            ready(l.local_addr()?.port());
            let mut received = 0u64;
            for _ in 0..count {
                let (mut s, _) = l.accept()?;
                received += if splice {
                    splice_to_eof(&s)?
                } else {
                    read_to_eof(&mut s)?
                };
                write_n(&mut s, download)?;
                s.shutdown(Shutdown::Write)?;
                // Wait for the peer's close so our FIN exchange completes.
                read_to_eof(&mut s)?;
            }
            println!(
                "{}",
                json!({"connections": count, "received": received, "sent": download * count, "pid": std::process::id()})
            );
        }
        Cmd::TcpSend {
            connect,
            upload,
            count,
            sendfile,
            each,
        } => {
            let mut received = 0u64;
            for _ in 0..count {
                let mut s = TcpStream::connect(connect)?;
                if sendfile {
                    sendfile_n(&s, upload)?;
                } else {
                    write_n(&mut s, upload)?;
                }
                s.shutdown(Shutdown::Write)?;
                let r = read_to_eof(&mut s)?;
                received += r;
                if each {
                    println!(
                        "{}",
                        json!({"local_port": s.local_addr()?.port(), "sent": upload, "received": r})
                    );
                }
            }
            println!(
                "{}",
                json!({"connections": count, "sent": upload * count, "received": received, "pid": std::process::id()})
            );
        }
        Cmd::UdpSend {
            to,
            size,
            count,
            connect,
            expect_reply,
        } => {
            let bind: SocketAddr = if to[0].is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            if connect {
                s.connect(to[0])?;
            }
            let buf = pattern(size);
            let mut rbuf = vec![0u8; 65536];
            let mut replies = 0u64;
            for t in &to {
                for _ in 0..count {
                    if connect {
                        s.send(&buf)?;
                    } else {
                        s.send_to(&buf, t)?;
                    }
                    if expect_reply {
                        replies += s.recv(&mut rbuf)? as u64;
                    }
                }
            }
            println!(
                "{}",
                json!({"local_port": s.local_addr()?.port(), "sent_each": size as u64 * count, "reply_bytes": replies, "pid": std::process::id()})
            );
        }
        Cmd::UdpRecv { bind, count, reply } => {
            let s = UdpSocket::bind(bind)?;
            ready(s.local_addr()?.port());
            let mut buf = vec![0u8; 65536];
            let mut total = 0u64;
            let answer = pattern(reply);
            for _ in 0..count {
                let (n, from) = s.recv_from(&mut buf)?;
                total += n as u64;
                if reply > 0 {
                    s.send_to(&answer, from)?;
                }
            }
            println!("{}", json!({"received": total, "pid": std::process::id()}));
        }
        Cmd::Ping { to, size, count } => {
            let (domain, proto, ty) = if to.is_ipv4() {
                (Domain::IPV4, Protocol::ICMPV4, 8u8)
            } else {
                (Domain::IPV6, Protocol::ICMPV6, 128u8)
            };
            let s = Socket::new(domain, Type::DGRAM, Some(proto))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let addr: SocketAddr = SocketAddr::new(to, 0);
            let mut msg = vec![ty, 0, 0, 0, 0, 0, 0, 0];
            msg.extend(pattern(size));
            let mut got = 0u64;
            let mut rbuf = [std::mem::MaybeUninit::<u8>::uninit(); 65536];
            for seq in 0..count {
                msg[6] = (seq >> 8) as u8;
                msg[7] = seq as u8;
                s.send_to(&msg, &addr.into())?;
                let (n, _) = s.recv_from(&mut rbuf)?;
                got += n as u64;
            }
            println!(
                "{}",
                json!({"sent": msg.len() as u64 * count, "received": got, "pid": std::process::id()})
            );
        }
        Cmd::TcpPhased {
            connect,
            before,
            after,
        } => {
            let mut s = TcpStream::connect(connect)?;
            write_n(&mut s, before)?;
            read_exact_n(&mut s, before)?;
            println!("phase1 {}", s.local_addr()?.port());
            std::io::stdout().flush()?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            write_n(&mut s, after)?;
            read_exact_n(&mut s, after)?;
            s.shutdown(Shutdown::Write)?;
            read_to_eof(&mut s)?;
            println!(
                "{}",
                json!({"local_port": s.local_addr()?.port(), "pid": std::process::id()})
            );
        }
        Cmd::TcpPhasedServe {
            listen,
            before,
            after,
        } => {
            let l = TcpListener::bind(listen)?;
            ready(l.local_addr()?.port());
            let (mut s, _) = l.accept()?;
            read_exact_n(&mut s, before)?;
            write_n(&mut s, before)?;
            read_exact_n(&mut s, after)?;
            write_n(&mut s, after)?;
            read_to_eof(&mut s)?;
            s.shutdown(Shutdown::Write)?;
            println!("{}", json!({"pid": std::process::id()}));
        }
        Cmd::TcpSlow {
            connect,
            upload,
            secs,
        } => {
            let mut s = TcpStream::connect(connect)?;
            let steps = 100u64;
            let chunk = upload / steps;
            for i in 0..steps {
                let n = if i == steps - 1 {
                    upload - chunk * (steps - 1)
                } else {
                    chunk
                };
                write_n(&mut s, n)?;
                std::thread::sleep(Duration::from_secs_f64(secs / steps as f64));
            }
            s.shutdown(Shutdown::Write)?;
            read_to_eof(&mut s)?;
            println!(
                "{}",
                json!({"local_port": s.local_addr()?.port(), "sent": upload, "pid": std::process::id()})
            );
        }
        Cmd::Handoff { connect, upload } => {
            let s = TcpStream::connect(connect)?;
            println!("connected {}", s.local_addr()?.port());
            std::io::stdout().flush()?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let child = std::process::Command::new(std::env::current_exe()?)
                .args(["stdin-send", "--bytes", &upload.to_string()])
                .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                    s.try_clone()?,
                )))
                .spawn()?;
            let child_pid = child.id();
            let status = child.wait_with_output()?.status;
            if !status.success() {
                return Err("stdin-send failed".into());
            }
            println!(
                "{}",
                json!({"child_pid": child_pid, "pid": std::process::id()})
            );
        }
        Cmd::StdinSend { bytes } => {
            let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
            let mut s = TcpStream::from(fd);
            write_n(&mut s, bytes)?;
            s.shutdown(Shutdown::Write)?;
        }
        Cmd::TcpMany {
            connect,
            count,
            max_upload,
            spread_ms,
            hold_ms,
        } => {
            let handles: Vec<_> = (0..count)
                .map(|i| {
                    std::thread::spawn(move || -> Option<serde_json::Value> {
                        std::thread::sleep(Duration::from_millis((i * 7919) % spread_ms.max(1)));
                        let up = 1 + (i * 104_729) % max_upload;
                        let mut s = TcpStream::connect(connect).ok()?;
                        let opened = realtime_ns();
                        let port = s.local_addr().ok()?.port();
                        // Half now, half a little later, so transfers straddle procflow's start.
                        write_n(&mut s, up / 2).ok()?;
                        let hold = if i % 4 == 0 { hold_ms } else { 0 };
                        std::thread::sleep(Duration::from_millis(20 + (i * 31) % 200 + hold));
                        write_n(&mut s, up - up / 2).ok()?;
                        let shutdown = realtime_ns();
                        s.shutdown(Shutdown::Write).ok()?;
                        let got = read_to_eof(&mut s).ok()?;
                        drop(s);
                        let closed = realtime_ns();
                        Some(json!({"local_port": port, "sent": up, "received": got,
                            "opened_ns": opened, "shutdown_ns": shutdown, "closed_ns": closed}))
                    })
                })
                .collect();
            let mut ok = 0;
            for h in handles {
                if let Some(v) = h.join().ok().flatten() {
                    println!("{v}");
                    ok += 1;
                }
            }
            println!("{}", json!({"connections": ok, "pid": std::process::id()}));
        }
        Cmd::Storm { connect, secs } => {
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut made = 0u64;
            let mut failed = 0u64;
            while Instant::now() < end {
                match TcpStream::connect(connect) {
                    Ok(mut s) => {
                        let _ = s.write_all(b"x");
                        let _ = s.shutdown(Shutdown::Write);
                        let _ = read_to_eof(&mut s);
                        made += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            println!(
                "{}",
                json!({"connections": made, "failed": failed, "pid": std::process::id()})
            );
        }
        Cmd::Hold { connections } => {
            use nix::sys::resource::{getrlimit, setrlimit, Resource};
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
            let l = TcpListener::bind("127.0.0.1:0")?;
            let addr = l.local_addr()?;
            let mut held = Vec::new();
            for _ in 0..connections {
                let c = TcpStream::connect(addr)?;
                let (s, _) = l.accept()?;
                held.push((c, s));
            }
            ready(addr.port());
            let mut sink = String::new();
            let _ = std::io::stdin().read_to_string(&mut sink);
            drop(held);
        }
        Cmd::DnsServe {
            bind,
            answer,
            count,
        } => {
            let s = UdpSocket::bind(bind)?;
            ready(s.local_addr()?.port());
            let mut buf = [0u8; 512];
            for _ in 0..count {
                let (n, from) = s.recv_from(&mut buf)?;
                let q = &buf[..n];
                let Some((_, qend)) = procflow_core::dns::question(q) else {
                    return Err("malformed DNS query".into());
                };
                let mut r = Vec::with_capacity(qend + 16);
                r.extend_from_slice(&q[..2]);
                r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
                r.extend_from_slice(&q[12..qend.min(n)]);
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&answer.octets());
                s.send_to(&r, from)?;
            }
            println!("{}", json!({"answered": count, "pid": std::process::id()}));
        }
        Cmd::PtrServe { bind, ptr } => {
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            let names: std::collections::HashMap<String, String> = ptr
                .iter()
                .map(|(ip, n)| (procflow_core::dns::reverse_name(ip), n.clone()))
                .collect();
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let d = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
                d.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            ready(s.local_addr()?.port());
            let (mut queries, mut named) = (0u64, Vec::new());
            let mut buf = [0u8; 512];
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let q = &buf[..n];
                let Some((qname, qend)) = procflow_core::dns::question(q) else {
                    continue;
                };
                queries += 1;
                let name = names.get(&qname);
                let r = match name {
                    Some(name) => procflow_core::dns::ptr_response(&q[..qend.min(n)], 0, &[name]),
                    None => procflow_core::dns::ptr_response(&q[..qend.min(n)], 3, &[]),
                };
                named.extend(name.cloned());
                s.send_to(&r, from)?;
            }
            println!("{}", json!({"queries": queries, "named": named}));
        }
        Cmd::DnsConnect {
            server,
            name,
            port,
            upload,
        } => {
            let s = UdpSocket::bind(if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in name.split('.') {
                q.push(label.len() as u8);
                q.extend_from_slice(label.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            s.send_to(&q, server)?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf)?;
            if n < 4 {
                return Err("short DNS answer".into());
            }
            let a = &buf[n - 4..n];
            let ip = std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let mut t = TcpStream::connect((ip, port))?;
            write_n(&mut t, upload)?;
            t.shutdown(Shutdown::Write)?;
            let got = read_to_eof(&mut t)?;
            println!(
                "{}",
                json!({"address": ip.to_string(), "sent": upload, "received": got, "pid": std::process::id()})
            );
        }
        Cmd::Sink { listen } => {
            let l = TcpListener::bind(listen)?;
            ready(l.local_addr()?.port());
            for s in l.incoming() {
                let mut s = s?;
                std::thread::spawn(move || {
                    let _ = read_to_eof(&mut s);
                });
            }
        }
    }
    Ok(())
}
