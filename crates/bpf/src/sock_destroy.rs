//! Closing established TCP connections from outside their process: the
//! `SOCK_DESTROY` request of the kernel's `sock_diag` netlink family
//! (`CONFIG_INET_DIAG_DESTROY`), sent from inside the connection's network
//! namespace. The peer gets a reset, the owner's next call fails with
//! ECONNABORTED.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

/// Closes one connection in the calling thread's network namespace.
/// Returns false when the kernel no longer has it.
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
    let msg = request(id, 1);
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
    let mut buf = [0u8; 512];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 20 {
        return Err(err("receive"));
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if kind != NLMSG_ERROR {
        return Err(BpfError::Load(format!(
            "sock_diag: unexpected reply type {kind}"
        )));
    }
    let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    match -code {
        0 => Ok(true),
        libc::ENOENT => Ok(false),
        libc::EOPNOTSUPP => Err(BpfError::Load(
            "this kernel cannot close sockets from outside (CONFIG_INET_DIAG_DESTROY is off)"
                .into(),
        )),
        e => Err(BpfError::Load(format!(
            "sock_diag destroy: {}",
            std::io::Error::from_raw_os_error(e)
        ))),
    }
}

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
}
