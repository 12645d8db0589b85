//! A minimal RFC 6455 client, just what a load generator needs.
//!
//! No WebSocket library on the data path: a connection is a bare
//! `TcpStream`, the upgrade request is written by hand, the 101 head is
//! read up to `\r\n\r\n`, client frames are masked here, and server frames
//! are parsed by [`parse_header`] straight out of whatever buffer the caller
//! read into. Nothing here allocates per message.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use base64::Engine as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

pub use herald::wire::ws::{OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

/// Largest server message we accept; anything bigger is a protocol error
/// (it would only be a bug or garbage on a load test).
pub const MAX_FRAME: usize = 64 << 20;

/// Largest HTTP response head we read before giving up.
pub const MAX_HEAD: usize = 16 << 10;

/// Why a connection attempt failed, by cause. Labels are stable: they are
/// keys of the JSON report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailCause {
    Refused,
    Timeout,
    /// The server answered the upgrade with this status instead of 101.
    Http(u16),
    Reset,
    /// No local port/address left (EADDRNOTAVAIL): add `--source-ips`.
    AddrUnavailable,
    /// EMFILE/ENFILE on our side.
    FdLimit,
    /// The server's answer was not HTTP, or the frames after it were bad.
    Protocol,
    /// SUBSCRIBE answered with ERROR `code`.
    Subscribe(u16),
    /// The server closed the WebSocket before the subscriptions were acked.
    Closed,
    Other,
}

impl FailCause {
    pub fn label(&self) -> String {
        match self {
            FailCause::Refused => "refused".into(),
            FailCause::Timeout => "timeout".into(),
            FailCause::Http(code) => format!("http_{code}"),
            FailCause::Reset => "reset".into(),
            FailCause::AddrUnavailable => "addr_unavailable".into(),
            FailCause::FdLimit => "fd_limit".into(),
            FailCause::Protocol => "protocol".into(),
            FailCause::Subscribe(code) => format!("subscribe_{code}"),
            FailCause::Closed => "closed".into(),
            FailCause::Other => "other".into(),
        }
    }

    pub fn from_io(e: &io::Error) -> FailCause {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => FailCause::Refused,
            K::TimedOut => FailCause::Timeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                FailCause::Reset
            }
            K::AddrNotAvailable | K::AddrInUse => FailCause::AddrUnavailable,
            _ => match e.raw_os_error() {
                Some(libc::EMFILE) | Some(libc::ENFILE) => FailCause::FdLimit,
                Some(libc::EADDRNOTAVAIL) => FailCause::AddrUnavailable,
                _ => FailCause::Other,
            },
        }
    }
}

/// Connects from `src` (port chosen at connect time) to `dst`.
///
/// `IP_BIND_ADDRESS_NO_PORT` defers the port choice to `connect()`, which
/// picks by the whole 4-tuple: a source port is then shared by different
/// targets and ports in TIME_WAIT from earlier runs are reused on loopback
/// (tcp_tw_reuse = 2), instead of each bound socket owning a port of the
/// ~28k range outright.
///
/// `rcvbuf` > 0 sets `SO_RCVBUF` first (slow readers: a small window makes
/// the server's queue fill instead of the kernel's buffers).
pub async fn connect(src: Ipv4Addr, dst: SocketAddr, rcvbuf: u32) -> io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    set_bind_no_port(&sock);
    if rcvbuf > 0 {
        sock.set_recv_buffer_size(rcvbuf)?;
    }
    sock.bind(SocketAddr::from((src, 0)))?;
    let s = sock.connect(dst).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn set_bind_no_port(sock: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: the fd is open and owned by `sock` for the whole call; the
    // option value points at a live c_int and its exact size is passed.
    // Failure (an old kernel) only costs the port-sharing optimisation.
    let _ = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// The upgrade request. `protocol` and `bearer` are left out for peers.
pub fn upgrade_request(
    host: &str,
    path: &str,
    key_seed: u64,
    protocol: Option<&str>,
    bearer: Option<&str>,
) -> Vec<u8> {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&key_seed.to_le_bytes());
    key[8..].copy_from_slice(&(!key_seed).rotate_left(17).to_le_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        r.push_str("Sec-WebSocket-Protocol: ");
        r.push_str(p);
        r.push_str("\r\n");
    }
    if let Some(b) = bearer {
        r.push_str("Authorization: Bearer ");
        r.push_str(b);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Position just after the first `\r\n\r\n`, if any.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The status code of an HTTP/1.x status line at the start of `head`.
pub fn status_code(head: &[u8]) -> Option<u16> {
    let line_end = head.iter().position(|&b| b == b'\r')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Reads the upgrade answer into `buf` (cleared first) until the end of
/// the head. On 101, returns the length of the head; bytes after it (frames
/// the server sent right away) stay in `buf[head..]`.
pub async fn read_upgrade_answer<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<usize, FailCause> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| FailCause::from_io(&e))?;
        if n == 0 {
            return Err(FailCause::Reset);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(buf) {
            return match status_code(&buf[..end]) {
                Some(101) => Ok(end),
                Some(code) => Err(FailCause::Http(code)),
                None => Err(FailCause::Protocol),
            };
        }
        if buf.len() > MAX_HEAD {
            return Err(FailCause::Protocol);
        }
    }
}

/// One parsed server frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// `hdr` header bytes then `len` payload bytes are all in the buffer.
    Frame {
        fin: bool,
        opcode: u8,
        hdr: usize,
        len: usize,
    },
    /// The frame needs `need` bytes in total (0 if the header itself is
    /// incomplete).
    Incomplete {
        need: usize,
    },
    Bad(&'static str),
}

/// Parses the server frame at the start of `buf`. Server frames are never
/// masked; reserved bits must be zero (we negotiate no extension).
pub fn parse_header(buf: &[u8]) -> Header {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Header::Incomplete { need: 0 };
    };
    if b0 & 0x70 != 0 {
        return Header::Bad("reserved bits set");
    }
    if b1 & 0x80 != 0 {
        return Header::Bad("masked server frame");
    }
    let opcode = b0 & 0x0f;
    let fin = b0 & 0x80 != 0;
    let (len, hdr) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Header::Incomplete { need: 0 };
            };
            (usize::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Header::Incomplete { need: 0 };
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            match usize::try_from(u64::from_be_bytes(a)) {
                Ok(l) if l <= MAX_FRAME => (l, 10),
                _ => return Header::Bad("frame too large"),
            }
        }
        n => (usize::from(n), 2),
    };
    if len > MAX_FRAME {
        return Header::Bad("frame too large");
    }
    if opcode >= 0x8 && (len > 125 || !fin) {
        return Header::Bad("bad control frame");
    }
    if !matches!(
        opcode,
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Header::Bad("unknown opcode");
    }
    if buf.len() < hdr + len {
        return Header::Incomplete { need: hdr + len };
    }
    Header::Frame {
        fin,
        opcode,
        hdr,
        len,
    }
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn push_masked_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Best effort: answer a close (or start one) and forget the socket.
pub async fn send_close(s: &mut TcpStream, code: u16, mask: [u8; 4]) {
    let mut f = Vec::with_capacity(8);
    push_masked_frame(&mut f, OP_CLOSE, &code.to_be_bytes(), mask);
    let _ = s.write_all(&f).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_all_sizes() {
        let f = herald::wire::client::publication_frame("t", 1, &[7u8; 100]);
        let Header::Frame {
            fin,
            opcode,
            hdr,
            len,
        } = parse_header(&f)
        else {
            panic!("complete frame");
        };
        assert!(fin);
        assert_eq!(opcode, OP_BINARY);
        assert_eq!(hdr + len, f.len());
        for big in [200usize, 70_000] {
            let f = herald::wire::client::publication_frame("t", 1, &vec![1u8; big]);
            assert!(
                matches!(parse_header(&f), Header::Frame { hdr, len, .. } if hdr + len == f.len())
            );
            for cut in 0..f.len().min(300) {
                assert!(matches!(parse_header(&f[..cut]), Header::Incomplete { .. }));
            }
            assert_eq!(
                parse_header(&f[..f.len() - 1]),
                Header::Incomplete { need: f.len() }
            );
        }
    }

    #[test]
    fn bad_headers() {
        assert_eq!(
            parse_header(&[0x82, 0x81]),
            Header::Bad("masked server frame")
        );
        assert_eq!(
            parse_header(&[0xc2, 0x01]),
            Header::Bad("reserved bits set")
        );
        assert_eq!(
            parse_header(&[0x09, 0x00]),
            Header::Bad("bad control frame")
        );
        assert_eq!(parse_header(&[0x83, 0x00]), Header::Bad("unknown opcode"));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&huge), Header::Bad("frame too large"));
    }

    #[test]
    fn masked_frames_round_trip() {
        for len in [0usize, 5, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            let mask = [1, 2, 3, 4];
            push_masked_frame(&mut out, OP_BINARY, &payload, mask);
            assert_eq!(out[0], 0x82);
            assert!(out[1] & 0x80 != 0);
            let (plen, h) = match out[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([out[2], out[3]])), 4),
                127 => (len, 10),
                n => (usize::from(n), 2),
            };
            assert_eq!(plen, len);
            let m = &out[h..h + 4];
            let un: Vec<u8> = out[h + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ m[i & 3])
                .collect();
            assert_eq!(un, payload);
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_code(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Some(101)
        );
        assert_eq!(status_code(b"HTTP/1.0 401 Unauthorized\r\n"), Some(401));
        assert_eq!(status_code(b"SSH-2.0\r\n"), None);
        assert_eq!(head_end(b"a\r\n\r\nxyz"), Some(5));
        assert_eq!(head_end(b"a\r\n\r"), None);
    }

    #[test]
    fn upgrade_request_shape() {
        let r = upgrade_request("127.0.0.1:1", "/ws", 5, Some("herald.v1"), Some("tok"));
        let s = String::from_utf8(r).expect("ascii");
        assert!(s.starts_with("GET /ws HTTP/1.1\r\n"));
        assert!(s.contains("Sec-WebSocket-Protocol: herald.v1\r\n"));
        assert!(s.contains("Authorization: Bearer tok\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
        let plain =
            String::from_utf8(upgrade_request("h", "/sub/x", 5, None, None)).expect("ascii");
        assert!(!plain.contains("Protocol") && !plain.contains("Authorization"));
    }
}
