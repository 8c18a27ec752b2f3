//! Closing established TCP connections from outside their process: the
//! `SOCK_DESTROY` request of the kernel's `sock_diag` netlink family
//! (`CONFIG_INET_DIAG_DESTROY`), sent from inside the connection's network
//! namespace. The peer gets a reset, the owner's next call fails with
//! ECONNABORTED.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::BpfError;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;

/// One TCP connection, as `sock_diag` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpId {
    /// 4 or 6: the socket's family (an IPv6 socket talking to IPv4 has
    /// family 6 and IPv4-mapped addresses).
    pub family: u8,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    /// The socket cookie, so only that very socket is closed.
    pub cookie: u64,
}

fn addr_words(ip: IpAddr, family: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    match (ip, family) {
        (IpAddr::V4(a), 4) => out[..4].copy_from_slice(&a.octets()),
        (IpAddr::V4(a), _) => out = a.to_ipv6_mapped().octets(),
        (IpAddr::V6(a), _) => out = a.octets(),
    }
    out
}

/// The request bytes: nlmsghdr + inet_diag_req_v2.
fn request(id: &TcpId, seq: u32) -> Vec<u8> {
    let mut req = Vec::with_capacity(72);
    req.push(if id.family == 6 {
        libc::AF_INET6 as u8
    } else {
        libc::AF_INET as u8
    });
    req.push(libc::IPPROTO_TCP as u8);
    req.push(0); // idiag_ext
    req.push(0); // pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&id.local.1.to_be_bytes());
    req.extend_from_slice(&id.remote.1.to_be_bytes());
    req.extend_from_slice(&addr_words(id.local.0, id.family));
    req.extend_from_slice(&addr_words(id.remote.0, id.family));
    req.extend_from_slice(&0u32.to_ne_bytes()); // interface
    req.extend_from_slice(&(id.cookie as u32).to_ne_bytes());
    req.extend_from_slice(&((id.cookie >> 32) as u32).to_ne_bytes());
    let len = 16 + req.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DESTROY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&req);
    msg
}

/// Replies ignored because they did not come from the kernel or did not
/// answer the request (wrong sender, sequence number, type or size).
static IGNORED: AtomicU64 = AtomicU64::new(0);

/// How many `sock_diag` replies were ignored so far (see [`destroy_here`]).
pub fn ignored_replies() -> u64 {
    IGNORED.load(Ordering::Relaxed)
}

/// Messages read for one request before giving up on a reply.
const MAX_READS: usize = 16;

/// What the kernel answered to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Closed it.
    Closed,
    /// It no longer has the connection.
    Gone,
    /// Refused, with this errno.
    Failed(i32),
}

/// Reads one message: a reply to request `seq` (of type `SOCK_DESTROY`)
/// sent by the kernel (netlink port 0) to our `port`, or `None` for
/// anything else, which must not be taken for an answer.
fn answer(msg: &[u8], sender: u32, port: u32, seq: u32) -> Option<Answer> {
    if sender != 0 || msg.len() < 36 {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes([msg[o], msg[o + 1], msg[o + 2], msg[o + 3]]);
    let u16_at = |o: usize| u16::from_ne_bytes([msg[o], msg[o + 1]]);
    let len = u32_at(0) as usize;
    if len < 36 || len > msg.len() {
        return None;
    }
    // nlmsghdr: len, type, flags, seq, pid; then nlmsgerr: error and the
    // request's own header.
    if u16_at(4) != NLMSG_ERROR || u32_at(8) != seq || u32_at(12) != port {
        return None;
    }
    if u16_at(20 + 4) != SOCK_DESTROY || u32_at(20 + 8) != seq {
        return None;
    }
    let code = u32_at(16) as i32;
    Some(match -code {
        0 => Answer::Closed,
        libc::ENOENT => Answer::Gone,
        e => Answer::Failed(e),
    })
}

/// The answer to request `seq` among the messages `recv` returns (bytes and
/// the sender's netlink port); every other message is ignored and counted.
fn await_answer(
    port: u32,
    seq: u32,
    mut recv: impl FnMut() -> Result<(Vec<u8>, u32), BpfError>,
) -> Result<Answer, BpfError> {
    for _ in 0..MAX_READS {
        let (msg, sender) = recv()?;
        match answer(&msg, sender, port, seq) {
            Some(a) => return Ok(a),
            None => {
                IGNORED.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "sock_diag: ignored a reply that is not the kernel's answer to the request \
                     (sender port {sender}, {} bytes)",
                    msg.len()
                );
            }
        }
    }
    Err(BpfError::Load(format!(
        "sock_diag destroy: no answer from the kernel in {MAX_READS} messages"
    )))
}

/// Closes one connection in the calling thread's network namespace.
/// Returns false when the kernel no longer has it. Only the kernel's
/// answer to this very request counts: a message from another sender, or
/// for another request, is ignored (and counted in [`ignored_replies`]).
pub fn destroy_here(id: &TcpId) -> Result<bool, BpfError> {
    let err = |what: &str| {
        BpfError::Load(format!(
            "sock_diag {what}: {}",
            std::io::Error::last_os_error()
        ))
    };
    // SAFETY: plain socket(2); the fd is owned by OwnedFd from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(err("socket"));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads a timeval of the given size.
    let set = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if set != 0 {
        return Err(err("receive timeout"));
    }
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let msg = request(id, seq);
    // SAFETY: sockaddr_nl zeroed is valid (the kernel as destination); msg
    // and the address outlive the call.
    let sent = unsafe {
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(err("send"));
    }
    // Our port, given when the request was sent (the kernel's answer is
    // addressed to it).
    // SAFETY: getsockname writes at most `len` bytes into `me`.
    let port = unsafe {
        let mut me: libc::sockaddr_nl = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        if libc::getsockname(
            fd.as_raw_fd(),
            (&mut me as *mut libc::sockaddr_nl).cast(),
            &mut len,
        ) != 0
        {
            return Err(err("getsockname"));
        }
        me.nl_pid
    };
    let recv = || {
        let mut buf = vec![0u8; 8192];
        // SAFETY: buf and the address are writable for the lengths given.
        let (n, sender) = unsafe {
            let mut from: libc::sockaddr_nl = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
            let n = libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_nl).cast(),
                &mut len,
            );
            let ok = len as usize >= std::mem::size_of::<libc::sockaddr_nl>()
                && from.nl_family == libc::AF_NETLINK as u16;
            (n, if ok { from.nl_pid } else { u32::MAX })
        };
        if n < 0 {
            return Err(err("receive"));
        }
        buf.truncate(n as usize);
        Ok((buf, sender))
    };
    match await_answer(port, seq, recv)? {
        Answer::Closed => Ok(true),
        Answer::Gone => Ok(false),
        Answer::Failed(libc::EOPNOTSUPP) => Err(BpfError::Load(
            "this kernel cannot close sockets from outside (CONFIG_INET_DIAG_DESTROY is off)"
                .into(),
        )),
        Answer::Failed(e) => Err(BpfError::Load(format!(
            "sock_diag destroy: {}",
            std::io::Error::from_raw_os_error(e)
        ))),
    }
}

/// Sequence numbers of requests, so an answer is known to be to its own.
static SEQ: AtomicU32 = AtomicU32::new(1);

/// Closes connections in the network namespace with inode `netns`.
/// Returns how many the kernel closed.
pub fn destroy_in(netns: u64, ids: &[TcpId]) -> Result<usize, BpfError> {
    let namespaces = crate::scan::namespaces();
    let path = namespaces
        .get(&netns)
        .ok_or_else(|| BpfError::Load(format!("network namespace {netns} is gone")))?;
    crate::scan::in_netns(path, || {
        let mut n = 0;
        for id in ids {
            if destroy_here(id)? {
                n += 1;
            }
        }
        Ok(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_inet_diag_req_v2() {
        let id = TcpId {
            family: 4,
            local: ("10.0.0.1".parse().unwrap(), 40000),
            remote: ("10.0.0.2".parse().unwrap(), 80),
            cookie: 0x1122_3344_5566_7788,
        };
        let m = request(&id, 7);
        assert_eq!(m.len(), 16 + 56);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), SOCK_DESTROY);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(&m[24..26], &40000u16.to_be_bytes());
        assert_eq!(&m[26..28], &80u16.to_be_bytes());
        assert_eq!(&m[28..32], &[10, 0, 0, 1]);
        assert_eq!(&m[44..48], &[10, 0, 0, 2]);
        assert_eq!(&m[64..68], &0x5566_7788u32.to_ne_bytes());
    }

    /// The kernel's answer to request `seq` from port `port`: nlmsgerr
    /// with `code`, echoing the request's header.
    fn reply(code: i32, kind: u16, seq: u32, port: u32, echoed_seq: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&port.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&72u32.to_ne_bytes());
        m.extend_from_slice(&SOCK_DESTROY.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.extend_from_slice(&echoed_seq.to_ne_bytes());
        m.extend_from_slice(&port.to_ne_bytes());
        m
    }

    #[test]
    fn only_the_kernels_answer_to_the_request_counts() {
        let (port, seq) = (4321, 9);
        let ok = reply(0, NLMSG_ERROR, seq, port, seq);
        assert_eq!(answer(&ok, 0, port, seq), Some(Answer::Closed));
        let gone = reply(-libc::ENOENT, NLMSG_ERROR, seq, port, seq);
        assert_eq!(answer(&gone, 0, port, seq), Some(Answer::Gone));
        let refused = reply(-libc::EPERM, NLMSG_ERROR, seq, port, seq);
        assert_eq!(
            answer(&refused, 0, port, seq),
            Some(Answer::Failed(libc::EPERM))
        );
        // A "success" from a process (netlink port not 0).
        assert_eq!(answer(&ok, 777, port, seq), None);
        // For another request, another socket, or not an ack at all.
        assert_eq!(
            answer(&reply(0, NLMSG_ERROR, seq + 1, port, seq + 1), 0, port, seq),
            None
        );
        assert_eq!(
            answer(&reply(0, NLMSG_ERROR, seq, port, seq + 1), 0, port, seq),
            None
        );
        assert_eq!(
            answer(&reply(0, NLMSG_ERROR, seq, port + 1, seq), 0, port, seq),
            None
        );
        assert_eq!(answer(&reply(0, 3, seq, port, seq), 0, port, seq), None); // NLMSG_DONE
                                                                              // Short, or claiming more bytes than arrived.
        assert_eq!(answer(&ok[..20], 0, port, seq), None);
        let mut long = ok.clone();
        long[0] = 200;
        assert_eq!(answer(&long, 0, port, seq), None);
    }

    #[test]
    fn a_forged_success_is_ignored_counted_and_the_real_answer_awaited() {
        let (port, seq) = (4321, 11);
        let before = ignored_replies();
        let mut queue = vec![
            (reply(0, NLMSG_ERROR, seq, port, seq), 999),
            (reply(0, NLMSG_ERROR, seq - 1, port, seq - 1), 0),
            (reply(-libc::ENOENT, NLMSG_ERROR, seq, port, seq), 0),
        ]
        .into_iter();
        let got = await_answer(port, seq, || Ok(queue.next().unwrap()));
        assert_eq!(got.unwrap(), Answer::Gone);
        assert!(ignored_replies() >= before + 2);
        // Nothing but forgeries: an error, never a success.
        let got = await_answer(port, seq, || Ok((reply(0, NLMSG_ERROR, seq, port, seq), 5)));
        assert!(got.is_err());
    }
}
