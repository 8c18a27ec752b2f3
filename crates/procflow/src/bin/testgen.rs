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
    /// Serve connections until killed: read to EOF, close (benchmark).
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn ready(port: u16) {
    println!("ready {port}");
    std::io::stdout().flush().ok();
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
